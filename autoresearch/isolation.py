"""What the harness keeps from a training and from an evaluation, and whether the sandbox is used at all.

`--sandbox auto|on|off` (settings.RunOptions.sandbox): `auto` probes bubblewrap when a run starts
(sandbox.probe: it runs a small command in a sandbox built the same way and checks that it holds)
and uses it when the check passes, else says in one line what protection is missing and goes on;
`on` refuses to start without it; `off` never uses it. The level in force is recorded per run and
per training run.

With the sandbox, a training sees the machine read-only, its fresh copy and its model folder
writable, the data the recipe's prepare step showed, and nothing of the workspace (the ledger,
runs/, .git, program.md, the person's checkout), of the home folder, or of what the prepare step
hid (the held-out data and the files it is made from). The harness's evaluation runs sandboxed too,
without network and without the workspace, but it reads the held-out data and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoresearch.evaluation import PreparedData
from autoresearch.errors import InvalidSetting

PACKAGE_DIR = Path(__file__).resolve().parent  # recipes' fixed files may import the harness's own library


@dataclass(frozen=True)
class SandboxPolicy:
    """The two kinds of sandbox of a run: a training's and an evaluation's."""

    workspace_root: Path
    data: PreparedData
    devices: tuple[Path, ...]

    def training(self, workdir: Path, model_dir: Path):
        """`workdir`: the training's fresh copy of its recipe folder, writable and its current folder."""
        from autoresearch.sandbox import SandboxSpec

        return SandboxSpec(workdir=workdir, writable=(model_dir,), readable=(*self.data.show, PACKAGE_DIR),
                           hidden=(self.workspace_root, *self.data.hide), devices=self.devices)

    def evaluation(self, workdir: Path, model_dir: Path):
        """`workdir`: the evaluation's fresh folder of the fixed files; the model is read-only."""
        from autoresearch.sandbox import SandboxSpec

        return SandboxSpec(workdir=workdir, readable=(model_dir, *self.data.show, *self.data.hide, PACKAGE_DIR),
                           hidden=(self.workspace_root,), devices=self.devices)


@dataclass(frozen=True)
class SandboxChoice:
    """What a run trains in: `policy` None means no sandbox; `problem` says why there is none when one was wanted."""

    level: str
    policy: SandboxPolicy | None
    problem: str | None = None


def choose_sandbox(mode: str, workspace_root: Path, data: PreparedData) -> SandboxChoice:
    """The sandbox for a run under `mode` (auto, on, off), after a probe that shows it holds on this machine."""
    if mode == "off":
        return SandboxChoice("none", None)
    from autoresearch.sandbox import gpu_devices, probe

    devices = gpu_devices()
    found = probe(devices=devices)
    if not found.available:
        if mode == "on":
            raise InvalidSetting("sandbox", f"is on, but the sandbox cannot run here: {found.problem}")
        return SandboxChoice("none", None, f"training without a sandbox ({found.problem}): the training can read "
                                           "and write whatever this user can; docs/trust.md says what that leaves open")
    return SandboxChoice(found.level, SandboxPolicy(Path(workspace_root), data, devices))
