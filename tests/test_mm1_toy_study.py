"""The toy MM1 study's grid files (ablations/mm1-toy/): they plan the cells the study README describes.

The encoders they start from are pre-trained by ablations/mm1-toy/encoders.sh (minutes of CPU), so here
stand-in encoder dirs are enough: the plan only needs the paths to exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmbench_cli.ablate.grid import build_plan

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "ablations" / "mm1-toy"
AXES = REPO / "mmbench_cli" / "resources" / "axes.yaml"
EXPECTED_CELLS = {"resolution_tokens": 8, "connector": 8, "encoder": 6, "data_mix": 18, "lm_size": 3, "vqa_world": 6,
                  "data_mix_64px": 4, "vqa_world_seed1": 2}


def encoder_names() -> list[str]:
    """The encoder dirs encoders.sh writes (``enc NAME ...`` lines)."""
    return re.findall(r"^enc (\S+) ", (STUDY / "encoders.sh").read_text(), flags=re.M)


@pytest.fixture
def study_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working dir where every encoder of the study exists (as an empty stand-in dir)."""
    for name in encoder_names():
        (tmp_path / "runs" / "mm1-toy" / "encoders" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("grid", sorted(EXPECTED_CELLS))
def test_study_grid_plans(grid: str, study_cwd: Path) -> None:
    plan = build_plan(str(STUDY / f"{grid}.yaml"), [], [], axes_path=AXES)
    assert plan.name == grid
    assert len(plan.cells) == EXPECTED_CELLS[grid]
    if not grid.startswith("vqa_world"):  # the VQA-dynamics grids evaluate captioning and VQA only, at every step
        assert "text:textcore" in plan.base.eval.tasks  # findings (c) and (e) need the text benchmark
    for cell in plan.cells:
        encoder = cell.config.model.encoder
        if encoder.startswith("runs/"):
            assert (study_cwd / encoder).is_dir()
            size = re.search(r"-(\d+)$", encoder)
            assert size and int(size.group(1)) == cell.config.model.image_size, cell.id  # pre-trained at its resolution


def test_study_axes_change_what_they_say(study_cwd: Path) -> None:
    cells = build_plan(str(STUDY / "resolution_tokens.yaml"), [], [], axes_path=AXES).cells
    assert {(c.config.model.image_size, c.config.model.num_image_tokens, c.config.seed) for c in cells} == {
        (r, t, s) for r in (32, 64) for t in (4, 16) for s in (0, 1)
    }
    connectors = build_plan(str(STUDY / "connector.yaml"), [], [], axes_path=AXES).cells
    assert {c.config.model.num_image_tokens for c in connectors} == {16}  # equal token counts
    mixes = build_plan(str(STUDY / "data_mix.yaml"), [], [], axes_path=AXES).cells
    by_label = {c.labels["data_mix"]: c.config.data.data_mix for c in mixes}
    assert by_label["cap45-int45-txt10"] == {"caption": 0.45, "interleaved": 0.45, "text": 0.10}  # MM1's default
    assert by_label["int100"]["caption"] == 0.0 and by_label["cap100"]["interleaved"] == 0.0
    assert all(sum(mix.values()) == pytest.approx(1.0) for mix in by_label.values())
    world = build_plan(str(STUDY / "vqa_world.yaml"), [], [], axes_path=AXES).cells
    assert {(c.config.data.world_version, c.config.model.image_size) for c in world} == {
        (v, r) for v in (1, 2, 3) for r in (32, 64)
    }
    assert all(c.config.eval.all_checkpoints and c.config.train.steps == 1000 for c in world)


# ------------------------------------------------------------------------------------- second edition (v2)
STUDY_V2 = REPO / "ablations" / "mm1-toy-v2"
EXPECTED_CELLS_V2 = {"resolution_tokens": 12, "connector": 9, "data_mix": 18, "encoder": 12, "lm_size": 9}


def test_v2_run_study_runs_every_grid_file() -> None:
    script = (STUDY_V2 / "run_study.sh").read_text()
    listed = re.search(r"GRIDS:-([a-z_ ]+)\}", script).group(1).split()
    assert sorted(listed) == sorted(p.stem for p in STUDY_V2.glob("*.yaml") if p.name != "base.yaml")
    assert sorted(listed) == sorted(EXPECTED_CELLS_V2)


@pytest.mark.parametrize("grid", sorted(EXPECTED_CELLS_V2))
def test_v2_grids_plan_three_seeds_on_world_4_with_dynamics(grid: str) -> None:
    plan = build_plan(str(STUDY_V2 / f"{grid}.yaml"), [], [], axes_path=AXES)
    assert plan.name == grid and len(plan.cells) == EXPECTED_CELLS_V2[grid]
    assert sorted({c.config.seed for c in plan.cells}) == [0, 1, 2]  # three training seeds in every grid
    for cell in plan.cells:
        cfg = cell.config
        assert cfg.data.world_version == 4 and cfg.train.freeze_encoder and cfg.train.steps == 600
        assert cfg.eval.all_checkpoints and cfg.eval.shots == [0, 2] and cfg.eval.num_samples == 500
        assert cfg.model.encoder.endswith(("-clip", "-mae"))  # pre-trained, cached encoders only
    if grid in ("data_mix", "lm_size"):
        assert "text:textcore" in plan.base.eval.tasks  # findings (c) and (e) need the text benchmark
    if grid == "connector":
        assert {c.config.model.num_image_tokens for c in plan.cells} == {16}
        assert {c.config.model.image_size for c in plan.cells} == {64}  # where captions are grounded

