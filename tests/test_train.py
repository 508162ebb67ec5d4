"""The training loop: checkpoint/resume equality, interrupts, the non-finite guard, run outputs."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from msd3d.catalogue.oracle import OraclePrior
from msd3d.config import load_config
from msd3d.run_dir import RunDir, load_checkpoint
from msd3d.train import Trainer, TrainingDiverged, TrainingInterrupted
from msd3d.workflows.text_to_3d import generate


def _config(overrides, steps=6, guidance="msd", **extra):
    values = {"prompt": "a red mushroom", "train.steps": steps, "guidance.name": guidance, "device": "cpu"}
    values.update(extra)
    return load_config(None, overrides, values)


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.renderer.state_dict().items()}


def _assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.parametrize("guidance", ["msd", "sds"])
def test_resumed_run_matches_uninterrupted(tmp_path, tiny_run_overrides, guidance):
    config = _config(tiny_run_overrides, steps=6, guidance=guidance)
    full = Trainer(config, tmp_path / "full", show_progress=False)
    full.fit()

    first = Trainer(config, tmp_path / "split", show_progress=False)
    first.fit(stop_at=3)
    assert load_checkpoint(RunDir(tmp_path / "split"))["step"] == 3
    second = Trainer(config, tmp_path / "split", show_progress=False)
    second.resume()
    assert second.step == 3
    second.fit()

    assert second.step == full.step == 6
    _assert_same_params(_params(full), _params(second))
    # the optimiser state continued too, not just the weights
    s_full, s_split = full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    for key in s_full:
        assert torch.equal(s_full[key]["exp_avg"], s_split[key]["exp_avg"])
    # metrics.jsonl has one line per step, none duplicated by the resume
    steps = [r["step"] for r in second.metrics.read()]
    assert steps == list(range(6))


def test_conditioning_steps_in_batches_changes_results_only_at_rounding(tmp_path, tiny_run_overrides):
    """issue 25: the oracle's images of 5 steps traced in one batch (``train.prefetch_steps``) give the run
    of one render per step up to float rounding, with lit and albedo steps mixed (each step's cameras,
    shading and lights come from the seed and the step alone); a resume in the middle of a batch is
    bit-identical to the uninterrupted run (batches are aligned to the step number)."""
    lit = [*tiny_run_overrides, "shading.albedo_only_steps=0"]
    one = Trainer(_config([*lit, "train.prefetch_steps=1"], steps=7), tmp_path / "one", show_progress=False)
    one.fit()
    assert len({r["shading"] for r in one.metrics.read()}) > 1
    batched = _config([*lit, "train.prefetch_steps=5"], steps=7)
    full = Trainer(batched, tmp_path / "full", show_progress=False)
    assert full.conditions.chunk == 5
    full.fit()
    first = Trainer(batched, tmp_path / "split", show_progress=False)
    first.fit(stop_at=3)
    second = Trainer(batched, tmp_path / "split", show_progress=False)
    second.resume()
    second.fit()
    _assert_same_params(_params(full), _params(second))
    for key, value in _params(one).items():
        assert torch.allclose(value, _params(full)[key], atol=1e-4), key
    assert [r["shading"] for r in one.metrics.read()] == [r["shading"] for r in second.metrics.read()]


def test_sigint_checkpoints_and_resumes_to_the_same_result(tmp_path, tiny_run_overrides):
    config = _config(tiny_run_overrides, steps=5)
    reference = Trainer(config, tmp_path / "ref", show_progress=False)
    reference.fit()

    trainer = Trainer(config, tmp_path / "run", show_progress=False)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background shell

    def interrupt(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal through the installed handler

    with pytest.raises(TrainingInterrupted, match="resume with: msd3d generate --resume"):
        trainer.fit(on_step=interrupt)
    assert load_checkpoint(RunDir(tmp_path / "run"))["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    resumed = Trainer(config, tmp_path / "run", show_progress=False)
    resumed.resume()
    resumed.fit()
    _assert_same_params(_params(reference), _params(resumed))


class _NaNOracle(OraclePrior):
    """The oracle, but its denoiser returns NaN on chosen guidance calls (counted per train step)."""

    prefetch_conditions = False  # one condition() per step, so counting them counts steps

    def __init__(self, bad_steps, **kwargs):
        super().__init__(**kwargs)
        self.bad_steps = set(bad_steps)
        self.step = -1

    def condition(self, prompts, **kwargs):
        self.step += 1
        return super().condition(prompts, **kwargs)

    def denoise_raw(self, z, sigma, payload):
        out = super().denoise_raw(z, sigma, payload)
        return torch.full_like(out, float("nan")) if self.step in self.bad_steps else out


def test_nonfinite_step_is_skipped_and_counted(tmp_path, tiny_run_overrides):
    config = _config(tiny_run_overrides, steps=4)
    trainer = Trainer(config, tmp_path / "run", prior=_NaNOracle({1}), show_progress=False)
    trainer.fit(stop_at=1)
    before = _params(trainer)
    trainer.fit(stop_at=2)  # step 1 is NaN: skipped, parameters untouched
    _assert_same_params(before, _params(trainer))
    trainer.fit()
    assert trainer.nonfinite_total == 1
    records = trainer.metrics.read()
    assert [r["finite"] for r in records] == [True, False, True, True]
    assert all(torch.isfinite(v).all() for v in _params(trainer).values() if v.is_floating_point())


def test_too_many_nonfinite_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, tiny_run_overrides):
    overrides = tiny_run_overrides + ["train.max_nonfinite_streak=3", "train.checkpoint_every=2"]
    config = _config(overrides, steps=20)
    trainer = Trainer(config, tmp_path / "run", prior=_NaNOracle(range(4, 100)), show_progress=False)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps had a non-finite"):
        trainer.fit()
    state = load_checkpoint(RunDir(tmp_path / "run"))
    assert state["step"] == 4  # written before the bad streak began (steps 4, 5, 6 failed)
    assert all(torch.isfinite(v).all() for v in state["field"].values() if v.is_floating_point())


def test_generate_writes_the_run_directory(tmp_path, tiny_run_overrides):
    config = _config(tiny_run_overrides, steps=3)
    summary = generate(config, tmp_path / "run", show_progress=False, log=lambda m: None)
    run = RunDir(tmp_path / "run")
    for path in (run.config, run.metrics, run.summary, run.checkpoint, run.mesh("obj"), run.video("mp4")):
        assert path.is_file(), path
    on_disk = json.loads(run.summary.read_text())
    assert on_disk["steps"] == 3
    assert on_disk["scores"]["family"] == "mushroom"
    assert 0 < on_disk["scores"]["blend_psnr"] < 100
    assert summary["mesh"]["faces"] > 0
    # the resolved config round-trips: what --resume and export read equals what ran
    assert load_config(run.config) == config
    assert list(run.validation.glob("step_*.png"))
    # where the time went, per finishing stage (scripts/bench_cpu.py reads it)
    assert {"scoring", "mesh", "video"} <= set(on_disk["stage_seconds"])
    assert all(seconds >= 0 for seconds in on_disk["stage_seconds"].values())


def test_guidance_parameters_are_optimised_and_checkpointed(tmp_path, tiny_run_overrides):
    """A method with trainable state (as VSD's LoRA would be): the trainer optimises Guidance.parameters()
    through GuidanceOutput.aux_loss, saves Guidance.state_dict() in the checkpoint and restores it."""
    from msd3d.guidance.sds import SDS

    class LearnedScale(SDS):
        def __init__(self, prior, config=None):
            super().__init__(prior, config)
            self.scale = torch.nn.Parameter(torch.zeros(()))

        def parameters(self):
            return [self.scale]

        def state_dict(self):
            return {"scale": self.scale.detach().clone()}

        def load_state_dict(self, state):
            with torch.no_grad():
                self.scale.copy_(state["scale"])

        def __call__(self, x, cond, step=0, total_steps=1, generator=None):
            out = super().__call__(x, cond, step, total_steps, generator)
            out.aux_loss = (self.scale - 2.0) ** 2
            return out

    def trainer(run):
        t = Trainer(_config(tiny_run_overrides, steps=4, guidance="sds"), run, show_progress=False)
        t.guidance = LearnedScale(t.prior, t.config.guidance.sds)
        t.optimizer = t._build_optimizer()
        return t

    first = trainer(tmp_path / "run")
    assert [g["name"] for g in first.optimizer.param_groups][-1] == "guidance"
    first.fit(stop_at=2)
    after_two = float(first.guidance.scale.detach())
    assert 0.0 < after_two < 2.0  # Adam moved it towards the minimum of (scale - 2)^2
    assert float(load_checkpoint(RunDir(tmp_path / "run"))["guidance_state"]["scale"]) == after_two
    second = trainer(tmp_path / "run")
    second.resume()
    assert float(second.guidance.scale.detach()) == after_two
    second.fit()
    assert float(second.guidance.scale.detach()) > after_two
