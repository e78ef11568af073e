"""One virtual environment per peer model server, from the pinned lock files in requirements/.

    .venv/bin/python bench/peers/venvs.py                 # create or reuse every peer's venv
    .venv/bin/python bench/peers/venvs.py --peers kserve  # only some
    .venv/bin/python bench/peers/venvs.py --relock        # re-resolve requirements/<peer>.lock from <peer>.in

The venvs live in ``.peers/<peer>/`` (gitignored). Each is installed with ``pip install --no-deps
-r requirements/<peer>.lock`` (the full closure, every version pinned), checked with ``pip check``
and refused if it holds torch or CUDA packages. Idempotent: a venv whose stamp matches its lock
file is reused without calling pip. The peers never share a venv with each other or with textclf
(MLServer and tritonclient cannot even be imported in one process).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).resolve().parent / "requirements"
VENVS = ROOT / ".peers"
PEERS = ("mlserver", "kserve", "pytriton")
STAMP = ".textclf-peer-lock"
BOOTSTRAP = {"pip", "setuptools", "wheel"}  # what `python -m venv` puts into every venv
# torch, its CUDA wheels and the CUDA runtime libraries must never be pulled by a peer (CPU benchmark)
FORBIDDEN = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-(cuda|cudnn|cublas|cufft|curand|cusolver|"
                       r"cusparse|nccl|nvjitlink|nvtx)[a-z0-9-]*|cupy[a-z0-9-]*)$")

logger = logging.getLogger("bench.peers.venvs")


def venv_python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def lock_path(peer: str) -> Path:
    return REQUIREMENTS / f"{peer}.lock"


def locked_packages(peer: str) -> dict[str, str]:
    """name -> version of the peer's lock file."""
    pins = {}
    for line in lock_path(peer).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    return pins


def forbidden_packages(names: list[str]) -> list[str]:
    return sorted(n for n in names if FORBIDDEN.match(n.lower().replace("_", "-")))


def _digest(peer: str) -> str:
    return hashlib.sha256(lock_path(peer).read_bytes()).hexdigest()


def is_current(peer: str) -> bool:
    stamp = VENVS / peer / STAMP
    return venv_python(peer).exists() and stamp.exists() and stamp.read_text().strip() == _digest(peer)


def ensure(peer: str) -> Path:
    """The peer's venv python, creating or updating the venv when its lock file changed."""
    if is_current(peer):
        logger.info("%s: reusing %s", peer, VENVS / peer)
        return venv_python(peer)
    bad = forbidden_packages(list(locked_packages(peer)))
    if bad:
        raise RuntimeError(f"{lock_path(peer)} pulls torch/CUDA packages: {bad}")
    if not venv_python(peer).exists():
        logger.info("%s: creating %s", peer, VENVS / peer)
        VENVS.mkdir(exist_ok=True)
        # the interpreter under the project venv: the peers get the same Python build
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(VENVS / peer)],
                       check=True)
    python = str(venv_python(peer))
    logger.info("%s: installing %d pinned packages (--no-deps) from %s", peer, len(locked_packages(peer)),
                lock_path(peer).relative_to(ROOT))
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "-r", str(lock_path(peer))], check=True)
    installed = _installed(python)
    extra = sorted(set(installed) - set(locked_packages(peer)) - BOOTSTRAP)
    if extra:  # left over from an older lock file: the venv holds exactly the lock
        logger.info("%s: removing %s (not in the lock file)", peer, " ".join(extra))
        subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", *extra], check=True)
    subprocess.run([python, "-m", "pip", "check"], check=True)
    bad = forbidden_packages(_installed(python))
    if bad:
        raise RuntimeError(f"the {peer} venv holds torch/CUDA packages: {bad}")
    (VENVS / peer / STAMP).write_text(_digest(peer) + "\n")
    return venv_python(peer)


def _installed(python: str) -> list[str]:
    listing = json.loads(subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True,
                                        capture_output=True, text=True).stdout)
    return [p["name"].lower().replace("_", "-") for p in listing]


def relock(peer: str) -> None:
    """Re-resolve ``<peer>.in`` (pip's resolver, dry run) into ``<peer>.lock``; needs pip >= 23."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                        "--report", str(report), "-r", str(REQUIREMENTS / f"{peer}.in")], check=True)
        install = json.loads(report.read_text())["install"]
    pins = sorted(f"{i['metadata']['name'].lower().replace('_', '-')}=={i['metadata']['version']}" for i in install)
    bad = forbidden_packages([p.split("==")[0] for p in pins])
    if bad:
        raise RuntimeError(f"{peer}.in resolves to torch/CUDA packages: {bad}")
    lock_path(peer).write_text(f"# generated by: python bench/peers/venvs.py --relock (from {peer}.in); "
                               "installed with --no-deps\n" + "\n".join(pins) + "\n")
    logger.info("%s: wrote %s (%d packages)", peer, lock_path(peer).relative_to(ROOT), len(pins))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    p.add_argument("--relock", action="store_true", help="re-resolve the lock files (then install)")
    args = p.parse_args(argv)
    for peer in args.peers:
        if args.relock:
            relock(peer)
        ensure(peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
