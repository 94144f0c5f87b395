"""The container image, built and run for real: offline, as its own user, on a read-only root.

Opt-in (``make test-image`` or ``SGP_TEST_IMAGE=1``): it needs root, ``debootstrap`` and ``buildah``
(``apt-get install podman buildah debootstrap``), the wheelhouse (``make wheelhouse``), and takes
minutes. Where any of that is missing it skips and says what. ``SGP_TEST_IMAGE_REUSE=1`` keeps the
image for the next run and runs an existing one without building it again.

1. A Debian bookworm base with python3, python3-venv and python-is-python3 is made with debootstrap
   and brought in with ``podman import`` (kept as ``BASE`` for the next run).
2. The Dockerfile is built on it with ``--build-arg WHEELHOUSE``: pip installs from the wheelhouse
   alone (``--no-index``, the lock's hashes), and the build runs in a network namespace of its own
   (``unshare --net``) where one can be made, so it has no network at all.
3. The image runs under ``buildah run --isolation chroot`` (``podman run`` cannot set rlimits in some
   sandboxes, this one included) with the image's own command, working directory, environment and
   user, the root filesystem read-only (a read-only bind mount of the container's root, as a runtime's
   ``--read-only`` does, /run a root-owned tmpfs as podman makes it then), a tmpfs on /tmp and the SGT
   mounted read-only at /models.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.procs import ROOT, Service, free_port, start_inference_server

BASE = "localhost/sgp-debian-python:bookworm"
REUSE = os.environ.get("SGP_TEST_IMAGE_REUSE") == "1"
# a tag of this run's own (two runs at once on one machine must not remove each other's image)
IMAGE = "localhost/sgt-proxy:test-image" if REUSE else f"localhost/sgt-proxy:test-image-{os.getpid()}"
MIRROR = os.environ.get("SGP_TEST_IMAGE_MIRROR", "http://deb.debian.org/debian")
WHEELHOUSE = Path(os.environ.get("SGP_TEST_IMAGE_WHEELHOUSE", ROOT / "wheelhouse"))
UID = 10001
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}

pytestmark = pytest.mark.timeout(1800)


def _timing(name: str, seconds: float) -> None:
    """Timings go to the terminal (and a file in the session's workdir) so a run reports them."""
    sys.__stdout__.write(f"\n[test_image] {name}: {seconds:.1f} s\n")
    sys.__stdout__.flush()


def _run(*argv: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv[:4])} ... exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def _why_not() -> str | None:
    """Why this machine cannot run the image test, or None."""
    if os.environ.get("SGP_TEST_IMAGE") != "1":
        return "the image test is opt-in: make test-image (or SGP_TEST_IMAGE=1)"
    if sys.platform != "linux" or os.geteuid() != 0:
        return "the image test needs root on Linux (debootstrap, buildah, mounts)"
    for tool in ("buildah", "podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: apt-get install podman buildah debootstrap"
    if not any(WHEELHOUSE.glob("torch-*.whl")):
        return f"no wheelhouse at {WHEELHOUSE}: make wheelhouse"
    free = shutil.disk_usage(Path("/var/lib/containers") if Path("/var/lib/containers").exists() else "/").free
    if free < 8 << 30:
        return f"less than 8 GiB free for container storage ({free >> 20} MiB)"
    try:
        WHEELHOUSE.resolve().relative_to(ROOT)
    except ValueError:
        return f"the wheelhouse {WHEELHOUSE} must lie inside the build context {ROOT}"
    return None


def _image_exists(name: str) -> bool:
    return _run("podman", "image", "exists", name, check=False).returncode == 0


def _base_image() -> None:
    """The debootstrapped base, made once; a machine that cannot make it skips (no mirror, no chroot)."""
    if _image_exists(BASE):
        return
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sgp-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        made = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python-is-python3",
             "bookworm", str(rootfs), MIRROR],
            capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        if made.returncode != 0:
            pytest.skip(f"debootstrap bookworm from {MIRROR} failed here: {made.stdout[-500:]}{made.stderr[-500:]}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
        tar.wait(60)
        assert imported.returncode == 0, imported.stderr
    _timing("debootstrap + podman import of the base", time.monotonic() - started)


def _can_run_containers() -> str | None:
    """A trivial ``buildah run`` on the base: where even that fails, the sandbox is the reason."""
    ctr = _run("buildah", "from", BASE, check=False)
    if ctr.returncode != 0:
        return f"buildah from failed here: {ctr.stderr[-500:]}"
    name = ctr.stdout.strip()
    try:
        probe = _run("buildah", "run", "--isolation", "chroot", name, "--", "python", "-c", "print(1)", check=False)
        if probe.returncode != 0 or probe.stdout.strip() != "1":
            return f"buildah run --isolation chroot does not work here: {probe.stderr[-500:]}"
    finally:
        _run("buildah", "rm", name, check=False)
    return None


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    _base_image()
    reason = _can_run_containers()
    if reason:
        pytest.skip(reason)
    if REUSE and _image_exists(IMAGE):  # a developer's rerun
        yield IMAGE
        return
    build = ["buildah", "bud", "--isolation", "chroot", "--format", "docker", "--layers=false",
             "--build-arg", f"BASE_IMAGE={BASE}",
             "--build-arg", f"WHEELHOUSE={WHEELHOUSE.resolve().relative_to(ROOT)}",
             "-t", IMAGE, str(ROOT)]  # fmt: skip
    ca_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca_bundle.exists():  # the machine's CA bundle as the build secret, as `make image CA_BUNDLE=...` passes it
        build[-3:-3] = ["--secret", f"id=ca_bundle,src={ca_bundle}"]
    no_network = subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    started = time.monotonic()
    _run(*(["unshare", "--net", *build] if no_network else build), timeout=1500)
    _timing(f"image build, offline ({'in a network namespace with no network' if no_network else '--no-index'})",
            time.monotonic() - started)  # fmt: skip
    yield IMAGE
    if not REUSE:
        _run("buildah", "rmi", "-f", IMAGE, check=False)


@pytest.fixture(scope="module")
def slow_upstream(workdir: Path) -> Iterator[Service]:
    """A null inference server (hidden 64, like the tiny SGT): up to 40 tokens, 0.1 s each."""
    service = start_inference_server(
        workdir, "--null-tokens", "40", "--token-delay", "0.1", "--hidden-size", "64", "--served-model-name", "null"
    )
    yield service
    service.stop()


class Container:
    """The image's command run as the image says, on a read-only root, with the SGT mounted."""

    def __init__(self, image: str, sgt: Path, env: dict[str, str], log_dir: Path) -> None:
        self.name = _run("buildah", "from", image).stdout.strip()
        config = json.loads(_run("buildah", "inspect", "--type", "container", self.name).stdout)["OCIv1"]["config"]
        self.config = config
        self.root = Path(_run("buildah", "mount", self.name).stdout.strip())
        # the runtime's mount points, made before the root turns read-only (a runtime's init layer does this)
        for point in ("etc/hosts", "etc/resolv.conf", "etc/hostname", "models/sgt_model.pt"):
            (self.root / point).touch()
        subprocess.run(["mount", "--bind", str(self.root), str(self.root)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(self.root)], check=True)
        # /run a root-owned tmpfs, as `podman run --read-only` makes it: buildah writes and removes its
        # /run/.containerenv there (on a read-only /run its clean-up fails); uid 10001 cannot write to it
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", str(self.root / "run")], check=True)
        self.argv = ["buildah", "run", "--isolation", "chroot", "--mount", "type=tmpfs,destination=/tmp",
                     "-v", f"{sgt}:/models/sgt_model.pt:ro"]  # fmt: skip
        for key, value in env.items():
            self.argv += ["--env", f"{key}={value}"]
        self.argv += [self.name, "--"]
        self.log_path = log_dir / f"container-{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return _run(*self.argv, *command, check=False, timeout=120)

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([*self.argv, *self.config["Cmd"]], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def gunicorns(self) -> list[psutil.Process]:
        """The container's gunicorn processes (chroot isolation: they are this machine's processes)."""
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children(recursive=True)
        return [
            p for p in children if "gunicorn" in " ".join(p.cmdline()) and "buildah" not in p.cmdline()[0] + p.name()
        ]

    def master(self) -> psutil.Process:
        procs = self.gunicorns()
        pids = {p.pid for p in procs}
        return next(p for p in procs if p.ppid() not in pids)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        subprocess.run(["umount", str(self.root / "run")], check=False)
        subprocess.run(["umount", str(self.root)], check=False)
        _run("buildah", "umount", self.name, check=False)
        _run("buildah", "rm", self.name, check=False)


def _wait_live(url: str, container: Container, timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert container.proc is not None and container.proc.poll() is None, container.log()[-4000:]
        try:
            if requests.get(url + "/livez", timeout=1).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the container did not answer /livez in {timeout} s:\n{container.log()[-4000:]}")


def test_the_image_serves_offline_as_its_user_on_a_read_only_root_and_drains_on_sigterm(
    image: str, tiny_sgt: Path, slow_upstream: Service, workdir: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        "SGP_INFERENCE_SERVICE_HOST": slow_upstream.url,  # chroot isolation: the machine's loopback
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "SGP_METRICS_PORT": str(metrics_port),
        "GUNICORN_GRACEFUL_TIMEOUT": "30",
    }
    container = Container(image, tiny_sgt, env, workdir)
    try:
        assert container.config["User"] == f"{UID}:{UID}"
        assert container.config["Cmd"] == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
        probe = container.exec(
            "sh", "-c", "id -u; touch /app/probe /opt/venv/probe 2>&1; touch /tmp/probe && echo tmp-writable"
        )
        assert probe.returncode == 0 and probe.stdout.splitlines()[0] == str(UID), probe.stdout + probe.stderr
        assert probe.stdout.count("Read-only file system") == 2 and "tmp-writable" in probe.stdout, probe.stdout

        container.start()
        url = f"http://127.0.0.1:{port}"
        _timing("container start to /livez", _wait_live(url, container))
        assert requests.get(url + "/readyz", timeout=10).status_code == 200
        procs = container.gunicorns()
        assert len(procs) == 2  # the master and one worker
        for proc in procs:
            assert proc.uids().real == UID and proc.uids().effective == UID and proc.gids().real == UID

        chat = requests.post(url + "/v1/chat/completions", json=CHAT, timeout=60)
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == " tok tok tok"
        assert requests.get(url + "/metrics", timeout=10).status_code == 404
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'sgp_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"} 1.0' in scraped

        # SIGTERM with a stream in flight: the stream ends whole, then the server exits cleanly
        stream = requests.post(url + "/v1/chat/completions", json={**CHAT, "max_tokens": 30, "stream": True},
                               stream=True, timeout=60)  # fmt: skip
        lines = stream.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith(b"data: {")
        container.master().send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rest = [line for line in lines if line]
        assert rest[-1] == b"data: [DONE]", rest[-3:]
        events = [json.loads(line[6:]) for line in [first, *rest[:-1]]]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        assert text == " tok" * 30 and events[-1]["choices"][0]["finish_reason"] == "length"
        assert container.proc is not None
        assert container.proc.wait(40) == 0, container.log()[-4000:]
        _timing("SIGTERM to exit, with a 3 s stream in flight", time.monotonic() - signalled)
        log = container.log()
        assert "Handling signal: term" in log and "Traceback" not in log, log[-4000:]
    finally:
        container.close()
