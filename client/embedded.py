"""Finding a farm for ``acl.init()``: ``NPUFARM_ADDRESS``, a running default farm, or an
embedded one started for this process.

The embedded farm is a child process (``python -m npufarm up --watch-parent PID``) on an ipc
endpoint in a private temporary directory; it stops at ``acl.finalize()``, at interpreter exit,
or by itself when this process dies.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import sys
import tempfile

from client.session import Session
from core import statefile
from core.errors import FarmUnavailable

__all__ = ["EmbeddedFarm", "connect"]

logger = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


class EmbeddedFarm:
    """A farm process owned by this client process."""

    def __init__(
        self,
        config_path: str | None = None,
        faults: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="npufarm-")
        self.address = f"ipc://{self.tmpdir}/farm.sock"
        cmd = [
            sys.executable,
            "-m",
            "npufarm",
            "up",
            "--endpoint",
            self.address,
            "--runtime-dir",
            self.tmpdir,
            "--name",
            f"embedded{os.getpid()}",
            "--watch-parent",
            str(os.getpid()),
        ]
        config_path = config_path or os.environ.get("NPUFARM_CONFIG")
        if config_path:
            cmd += ["--config", config_path]
        faults = faults or os.environ.get("NPUFARM_FAULTS")
        if faults:
            cmd += ["--faults", faults]
        cmd += extra or []
        # a session of its own: Ctrl-C at a terminal reaches the owner, which stops the farm
        # when it is done with it (finalize/exit); --watch-parent covers an owner that dies
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.error("embedded farm did not stop; killing it")
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        atexit.unregister(self.stop)


def connect() -> tuple[Session, EmbeddedFarm | None]:
    """A session to the farm this process should use."""
    address = statefile.resolve_address()
    if address is not None:
        return Session(address), None
    farm = EmbeddedFarm()
    try:
        return Session(address=farm.address, connect_timeout_s=_START_TIMEOUT_S), farm
    except FarmUnavailable:
        farm.stop()
        raise
