// The admin's health dashboard (README#health-dashboard): reads the state every few
// seconds and redraws the table; a reset button posts to /v1/health/<provider>/reset
// (with {"model": ...} for one deployment) using the page's CSRF token. Plain DOM, no
// build step; every text from the server goes in through textContent, never as HTML.
"use strict";

(function () {
  const root = document.getElementById("health-dashboard");
  if (!root) return;
  const body = root.querySelector("#health-table tbody");
  const message = document.getElementById("health-message");
  const refreshMs = Number(root.dataset.refreshSeconds || 3) * 1000;
  const csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  const words = {healthy: "healthy (closed)", unhealthy: "unhealthy (open)", half_open: "half-open", degraded: "degraded"};

  function cell(row, text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function badge(status) {
    const span = document.createElement("span");
    span.className = "breaker";
    span.dataset.status = status;
    span.textContent = words[status] || status;
    return span;
  }

  function halfOpenIn(entry, now) {
    if (entry.status === "half_open") return "now (one trial call)";
    if (entry.unhealthy_until_unix == null || entry.status !== "unhealthy") return "—";
    return Math.max(0, Math.ceil(entry.unhealthy_until_unix - now)) + " s";
  }

  function resetButton(provider, model) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button reset";
    button.textContent = model ? "Reset deployment" : "Reset provider";
    button.addEventListener("click", () => reset(provider, model, button));
    return button;
  }

  function row(key, kind, entry, now, inFlight, provider, model) {
    const tr = document.createElement("tr");
    tr.className = kind;
    tr.dataset.key = key;
    cell(tr, key);
    cell(tr, badge(entry.status), "status");
    cell(tr, String(entry.consecutive_failures), "failures");
    cell(tr, entry.last_error || "—", "last-error");
    cell(tr, halfOpenIn(entry, now), "half-open-in");
    cell(tr, inFlight, "in-flight");
    cell(tr, resetButton(provider, model));
    return tr;
  }

  function render(state) {
    const now = state.now_unix;
    const rows = [];
    for (const name of Object.keys(state.providers).sort()) {
      const p = state.providers[name];
      const cap = p.max_concurrent == null ? "no cap" : String(p.max_concurrent);
      rows.push(row(name, "provider", p, now, p.in_flight + " / " + cap, name, null));
      for (const model of Object.keys(p.models).sort()) {
        rows.push(row(name + "/" + model, "deployment", p.models[model], now, "—", name, model));
      }
    }
    body.replaceChildren(...rows);
    const overall = document.getElementById("health-overall");
    overall.dataset.status = state.status;
    overall.textContent = state.status;
    document.getElementById("health-updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  function say(text, isError) {
    message.textContent = text;
    message.classList.toggle("error", Boolean(isError));
  }

  async function refresh() {
    try {
      const response = await fetch(root.dataset.stateUrl, {credentials: "same-origin", cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (error) {
      say("Could not refresh: " + error.message, true);
    }
  }

  async function reset(provider, model, button) {
    button.disabled = true;
    const url = root.dataset.resetUrl.replace("__provider__", encodeURIComponent(provider));
    try {
      const response = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRFToken": csrf},
        body: JSON.stringify(model ? {model: model} : {}),
      });
      if (!response.ok) {
        const answer = await response.json().catch(() => ({}));
        throw new Error((answer.error && answer.error.message) || "HTTP " + response.status);
      }
      say("Reset " + (model ? provider + "/" + model : provider) + ".", false);
    } catch (error) {
      say("Reset failed: " + error.message, true);
    } finally {
      button.disabled = false;
      await refresh();
    }
  }

  refresh();
  setInterval(refresh, refreshMs);
})();
