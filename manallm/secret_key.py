"""The generated SECRET_KEY of an install with no DJANGO_SECRET_KEY (README#exposing-manallm).

Django signs password-reset tokens, session auth hashes and signed cookies with it, so a
constant in the source would let anyone forge them on every default install. Instead the
first process to start writes a random key into a file beside the database (mode 0600)
and every later start, and every worker starting at the same moment, reads that one key.
Imported by settings, so it imports no app.
"""
import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

KEY_BYTES = 50  # token_urlsafe(50): 67 characters, well past Django's security.W009


def key_file_for(database: dict, project_dir: Path) -> Path:
    """Beside the SQLite file (``db.sqlite3`` -> ``db.sqlite3.secret_key``); otherwise
    (PostgreSQL, an in-memory SQLite) ``.secret_key`` in the project directory."""
    name = str(database.get("NAME") or "")
    if database.get("ENGINE", "").endswith("sqlite3") and name and name != ":memory:" and "mode=memory" not in name:
        path = Path(name)
        return path.with_name(path.name + ".secret_key")
    return project_dir / ".secret_key"


def load_or_create(path: Path) -> str:
    """The key in ``path``, created (0600) if absent.

    Creation is atomic: the key is written whole into a private temporary file, then
    hard-linked to ``path``, which fails if another process got there first. So a
    reader never sees a half-written key, and workers starting together agree on one.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(KEY_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won the race: use its key
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    key = path.read_text().strip()
    if len(key) < 50:
        raise ImproperlyConfigured(f"{path} does not hold a usable secret key: delete it to generate one, "
                           f"or set DJANGO_SECRET_KEY.")
    return key
