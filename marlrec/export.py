"""`marlrec export`: the agents' scoring networks made smaller and faster for CPU serving.

Every format first rewrites marlrec's candidate scorers (actors and Q-networks) with their
per-item part computed once over the catalog (`marlrec.agents.precomputed`): scoring then
gathers small precomputed vectors per candidate instead of projecting its 384-d embedding.
Other networks (a plugin's) are exported as they are. The fp32 checkpoint is the reference.

- `int8`: dynamic int8 quantisation of every `nn.Linear` (weights stored as int8, activations
  quantised on the fly), run by torch.
- `onnx`: each network traced to ONNX (the batch axis dynamic; the candidate count is part of
  the run's observation layout) and run by ONNX Runtime.
- `onnx-int8`: the ONNX networks with ONNX Runtime's own dynamic int8 quantisation of their
  matrix products.

An export lands in `run_dir/export/<format>/` with `export.json`: the scoring speed-up over
fp32 (the networks over the observations that ranking the validation users produces, both timed
in this process on the same threads, call by call in turn, median of several repeats) and the
top-10 overlap with fp32 on the validation users (the full agent ranking, the exported scorer
swapped in).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from marlrec.agents import checkpoint_path
from marlrec.agents.marl import MASKED_LOGIT, CandidateActor, CandidateQNet
from marlrec.agents.precomputed import PrecomputedScores
from marlrec.envs import CandidateScorer
from marlrec.evaluation.rankers import AgentRanker, slate_core
from marlrec.pipeline import Pipeline
from marlrec.recommend import load_run
from marlrec.registry import MarlrecError
from marlrec.versions import current_dir

FORMATS = ("int8", "onnx", "onnx-int8")
MODELS = ("fp32", *FORMATS)  # what `marlrec serve model=...` accepts
K = 10  # the overlap's cut-off
CHUNK = 256  # validation users ranked together, as evaluation does
REPEATS = 7  # timing repeats; the median is reported
INT8_FILE = "scoring.pt"
ONNX_TOLERANCE = 1e-3  # the largest score difference an unquantised ONNX export may show


def export_dir(run_dir: Path, fmt: str) -> Path:
    """Beside the checkpoint it is made from: the served version's (`marlrec.versions`)."""
    return current_dir(run_dir) / "export" / fmt


def checkpoint_digest(run_dir: Path) -> str:
    """SHA-1 (12 hex digits) of the checkpoint a run serves (`best`, else `last`), which
    `marlrec serve` also reports as its model version."""
    folder = current_dir(run_dir)
    path = checkpoint_path(folder, "best")
    if not path.is_file():
        path = checkpoint_path(folder)
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12]


def export_run(run_dir: Path, fmt: str, force: bool = False, repeats: int = REPEATS) -> dict:
    """Export `run_dir`'s scoring networks as `fmt`, measure them, and return export.json."""
    if fmt not in FORMATS:
        raise MarlrecError(f"unknown format '{fmt}'; formats: {', '.join(FORMATS)}")
    target = export_dir(run_dir, fmt)
    if target.exists() and not force:  # checked before the run is loaded
        raise MarlrecError(f"{target} exists; pass force=true to replace it")
    if fmt != "int8":
        _onnxruntime()  # missing, a one-line error before the run is loaded
    pipeline = load_run(run_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{fmt}.", suffix=".tmp"))
    staging.chmod(0o755)  # as a plain directory would be, not mkdtemp's 0700
    try:
        write_networks(staging, fmt, pipeline)
        scorer = load_networks(staging, fmt, pipeline)
        report = {
            "format": fmt,
            "checkpoint": checkpoint_digest(run_dir),
            **measure(pipeline, scorer, repeats),
            "size_bytes": _size(staging),
        }
        if fmt == "onnx" and report["max_abs_difference"] > ONNX_TOLERANCE:
            # The trace took a batch-dependent path as a constant: not a faithful export.
            raise MarlrecError(
                f"the ONNX networks' scores differ from fp32's by up to "
                f"{report['max_abs_difference']:.3g} on the validation users; not exported"
            )
        (staging / "export.json").write_text(json.dumps(report, indent=2) + "\n")
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def write_networks(folder: Path, fmt: str, p: Pipeline) -> None:
    """The scoring networks of `p` as `fmt`, written into `folder`."""
    roles, nets = scoring_networks(p)
    if fmt == "int8":
        _save_int8(folder, roles, nets)
    else:
        _save_onnx(folder, roles, nets, p, quantise=fmt == "onnx-int8")


def scoring_networks(p: Pipeline) -> tuple[list[int], list[nn.Module]]:
    """The distinct scoring networks and, per role, the index of the one it uses (roles may
    share a network)."""
    roles: list[int] = []
    nets: list[nn.Module] = []
    for role in range(len(p.env.spec.roles)):
        net = p.agent.scoring_network(role)
        index = next((i for i, known in enumerate(nets) if known is net), len(nets))
        if index == len(nets):
            nets.append(net)
        roles.append(index)
    return roles, nets


class _Scores(nn.Module):
    """A scoring network as obs -> scores: the tensor function that is exported."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)[0]


class TorchScorer:
    """Candidate scores from torch modules (the int8 ones), one per distinct network."""

    def __init__(self, roles: list[int], nets: list[nn.Module]) -> None:
        self.roles, self.nets = roles, nets

    def __call__(self, obs: torch.Tensor, role: int) -> torch.Tensor:
        # Inference mode skips autograd's bookkeeping on every op (about a tenth of the time
        # here); the scores are cloned out of it so that callers may change them in place.
        with torch.inference_mode():
            scores = self.nets[self.roles[role]](obs.cpu())
        return scores.clone().to(obs.device)


class OnnxScorer:
    """Candidate scores from ONNX Runtime sessions, one per distinct network."""

    def __init__(self, roles: list[int], sessions: list[Any]) -> None:
        self.roles, self.sessions = roles, sessions

    def __call__(self, obs: torch.Tensor, role: int) -> torch.Tensor:
        feed = {"obs": obs.detach().cpu().numpy().astype(np.float32, copy=False)}
        try:
            scores = self.sessions[self.roles[role]].run(None, feed)[0]
        except Exception as exc:  # ONNX Runtime's errors share no base class but Exception
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MarlrecError(f"ONNX Runtime failed on a batch of {len(obs)}: {first}") from None
        return torch.from_numpy(scores).to(obs.device)


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """torch 2.13 warns that eager quantisation, quantised tensors' storage and the TorchScript
    ONNX exporter will move; all still work as used here, so those warnings are silenced. So
    are the tracer's cautions that a shape or a converted value is taken as a constant: the
    observation's layout is fixed by the run, and every ONNX export is checked against fp32 on
    batches of another size than the traced one (`export_run`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for message in (
            "torch.ao.quantization is deprecated",
            "torch.quantize_per_tensor",
            "TypedStorage is deprecated",
            "You are using the legacy TorchScript-based ONNX",
            "The feature will be removed",
            "Exporting a model to ONNX with a batch_size other than 1",
            "Exporting aten::index operator of advanced indexing",
        ):
            warnings.filterwarnings("ignore", message)
        yield


def serving_module(net: nn.Module) -> nn.Module:
    """`net` as obs -> scores on the CPU, its per-item part precomputed over the catalog where
    the network is one of marlrec's candidate scorers (`PrecomputedScores`)."""
    if isinstance(net, CandidateActor | CandidateQNet):
        return PrecomputedScores(net)
    return _Scores(copy.deepcopy(net)).cpu().eval()


def _quantised(net: nn.Module) -> nn.Module:
    """`serving_module(net)` with every Linear dynamically quantised to int8."""
    with _quiet_deprecations():
        q = torch.ao.quantization.quantize_dynamic(
            serving_module(net), {nn.Linear}, dtype=torch.qint8
        )
    return q


def _save_int8(folder: Path, roles: list[int], nets: list[nn.Module]) -> None:
    states = [_quantised(net).state_dict() for net in nets]
    torch.save({"roles": roles, "nets": states}, folder / INT8_FILE)


def _save_onnx(
    folder: Path, roles: list[int], nets: list[nn.Module], p: Pipeline, quantise: bool
) -> None:
    example = _example_observation(p)
    for index, net in enumerate(nets):
        module = serving_module(net)
        path = folder / f"role_net_{index}.onnx"
        traced = path.with_suffix(".fp32.onnx") if quantise else path
        with _quiet_deprecations(), torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(traced),
                dynamo=False,
                input_names=["obs"],
                output_names=["scores"],
                dynamic_axes={"obs": {0: "batch"}, "scores": {0: "batch"}},
            )
        if quantise:
            _quantise_onnx(traced, path)
            traced.unlink()
    (folder / "roles.json").write_text(json.dumps(roles) + "\n")


def _quantise_onnx(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation (weights int8, activations per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger = logging.getLogger()  # it advises pre-processing on the root logger: not needed
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    finally:
        logger.setLevel(level)


def _example_observation(p: Pipeline) -> torch.Tensor:
    """A real observation batch (two validation users' first turn), to trace the networks."""
    captured: list[torch.Tensor] = []

    def record(obs: torch.Tensor, role: int) -> torch.Tensor:
        captured.append(obs)
        return p.agent.candidate_scores(obs, role)

    users = _validation_users(p)[:2]
    AgentRanker(slate_core(p.env), record).rank([p.data.history_before(u, "valid") for u in users])
    return captured[0].cpu()


def load_scorer(run_dir: Path, model: str, p: Pipeline) -> CandidateScorer:
    """The scorer `marlrec serve model=...` ranks with: fp32 is the agent's own."""
    if model not in MODELS:
        raise MarlrecError(f"unknown model '{model}'; models: {', '.join(MODELS)}")
    if model == "fp32":
        return fp32_scorer(p)
    check_export(run_dir, model)
    return load_networks(export_dir(run_dir, model), model, p)


def fp32_scorer(p: Pipeline) -> CandidateScorer:
    """What `model=fp32` serves: on a CPU, the agent's networks with their per-item part
    computed once over the catalog (`serving_module`), the same scores up to float rounding
    at a fraction of the work; on an accelerator, the networks as they are."""
    if p.agent.device.type != "cpu":
        return p.agent.candidate_scores
    roles, nets = scoring_networks(p)
    return TorchScorer(roles, [serving_module(net) for net in nets])


def check_export(run_dir: Path, model: str) -> None:
    """A one-line error if `run_dir` has no `model` export, or one of another checkpoint."""
    if model not in FORMATS:
        raise MarlrecError(f"unknown model '{model}'; models: {', '.join(MODELS)}")
    folder = export_dir(run_dir, model)
    if not (folder / "export.json").is_file():
        raise MarlrecError(
            f"{run_dir} has no {model} export: run marlrec export run_dir={run_dir} format={model}"
        )
    made_from = json.loads((folder / "export.json").read_text()).get("checkpoint")
    if made_from != checkpoint_digest(run_dir):
        raise MarlrecError(
            f"{folder} was exported from another checkpoint of the run; export it again "
            "with force=true"
        )


def load_networks(folder: Path, fmt: str, p: Pipeline) -> CandidateScorer:
    """The scorer over the networks `write_networks` wrote into `folder`."""
    _, nets = scoring_networks(p)
    if fmt == "int8":
        with _quiet_deprecations():
            saved = torch.load(folder / INT8_FILE, map_location="cpu", weights_only=False)
        modules = [_quantised(net) for net in nets]
        for module, state in zip(modules, saved["nets"], strict=True):
            module.load_state_dict(state)
        return TorchScorer(saved["roles"], modules)
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as torch, for a fair comparison
    options.inter_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(folder / f"role_net_{i}.onnx"), options, ["CPUExecutionProvider"])
        for i in range(len(nets))
    ]
    return OnnxScorer(json.loads((folder / "roles.json").read_text()), sessions)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MarlrecError("onnx needs ONNX Runtime: pip install 'marlrec[export]'") from None
    return onnxruntime


def _validation_users(p: Pipeline) -> np.ndarray:
    """Users with a validation item, as the validation metrics count them."""
    return np.flatnonzero(np.asarray(p.data.split.valid_item) >= 0)


def measure(p: Pipeline, scorer: CandidateScorer, repeats: int = REPEATS) -> dict[str, Any]:
    """Speed-up of `scorer` over fp32 and its top-10 overlap with fp32, on the validation users."""
    core = slate_core(p.env)
    users = _validation_users(p)
    reference = p.agent.candidate_scores
    calls: list[tuple[torch.Tensor, int]] = []

    def recording(obs: torch.Tensor, role: int) -> torch.Tensor:
        calls.append((obs, role))
        return reference(obs, role)

    overlaps: list[float] = []
    for start in range(0, len(users), CHUNK):
        chunk = users[start : start + CHUNK]
        histories = [p.data.history_before(u, "valid") for u in chunk]
        fp32 = AgentRanker(core, recording)(chunk, histories, K)
        exported = AgentRanker(core, scorer)(chunk, histories, K)
        overlaps += [
            len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(fp32, exported, strict=True)
        ]
    fp32_s, export_s = _time(reference, scorer, calls, repeats)
    return {
        "speedup": fp32_s / export_s,
        f"top{K}_overlap": float(np.mean(overlaps)),
        "max_abs_difference": max(_difference(reference, scorer, obs, role) for obs, role in calls),
        "fp32_seconds": fp32_s,
        "export_seconds": export_s,
        "validation_users": len(users),
        "scoring_calls": len(calls),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def _difference(
    reference: CandidateScorer, scorer: CandidateScorer, obs: torch.Tensor, role: int
) -> float:
    """The largest score difference on the open candidates (masked ones share one constant)."""
    expected, got = reference(obs, role), scorer(obs, role)
    open_ = expected > MASKED_LOGIT / 2
    return float((expected - got)[open_].abs().max()) if bool(open_.any()) else 0.0


def _time(
    reference: CandidateScorer,
    scorer: CandidateScorer,
    calls: list[tuple[torch.Tensor, int]],
    repeats: int,
) -> tuple[float, float]:
    """Median seconds of each scorer over every recorded call. The two alternate call by call,
    so that both see the same machine load; one untimed warm-up pass first."""
    totals: list[list[float]] = []
    for repeat in range(repeats + 1):
        spent = [0.0, 0.0]
        for obs, role in calls:
            for which, score in enumerate((reference, scorer)):
                start = time.perf_counter()
                score(obs, role)
                spent[which] += time.perf_counter() - start
        if repeat:  # the first pass warms caches and allocators
            totals.append(spent)
    return statistics.median(t[0] for t in totals), statistics.median(t[1] for t in totals)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def _replace(staging: Path, target: Path) -> None:
    """Move the finished export into place; an earlier one (force) goes only once the new one
    is complete, and is put back if the move fails."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
