"""LoRA fine-tuning through the trainer and the CLI: only adapters train, adapters are saved alone, the
merged checkpoint loads strictly through build_sam2 and computes what base + adapters compute."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from training_loop_support import (
    MICRO_MODEL_OVERRIDES,
    MODEL_CONFIG,
    NO_DROPOUT_OVERRIDES,
    RESOLUTION,
    TRAIN_CONFIG,
    make_clips,
    training_overrides,
)

from sam2.build_sam import build_sam2
from sam2.training.lora import (
    DEFAULT_TARGET_MODULES,
    LoRASettings,
    add_lora_adapters,
    is_adapter_key,
    merge_adapter_checkpoint,
    trainable_parameter_count,
)
from sam2.training.train import compose_training_config, main
from sam2.training.trainer import MERGED_CHECKPOINT_NAME

pytestmark = pytest.mark.usefixtures("one_thread")

RANK = 4
LORA_OVERRIDES = [
    f"trainer.lora.rank={RANK}",
    "trainer.lora.alpha=8",
    "scratch.base_lr=1e-3",
    "scratch.vision_lr=1e-3",
]


def _micro_sam2(checkpoint: Path | None = None) -> torch.nn.Module:
    return build_sam2(
        MODEL_CONFIG,
        None if checkpoint is None else str(checkpoint),
        device="cpu",
        hydra_overrides_extra=[*MICRO_MODEL_OVERRIDES, f"model.image_size={RESOLUTION}"],
    )


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    """A plain {"model": state_dict} checkpoint of the micro model: the frozen base."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("base") / "base.pt"
    torch.save({"model": _micro_sam2().state_dict()}, path)
    return path


def _overrides(root: Path, base: Path, log_dir: Path, num_epochs: int = 1, extra: list[str] | None = None):
    img, gt = make_clips(root / "data", {"a": 4, "b": 3})
    return training_overrides(
        img,
        gt,
        log_dir,
        num_epochs=num_epochs,
        extra=[
            *NO_DROPOUT_OVERRIDES,
            *LORA_OVERRIDES,
            f"trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path={base}",
            *(extra or []),
        ],
    )


def test_settings_rank_zero_is_off_and_bad_targets_name_the_key():
    assert LoRASettings.from_config({"rank": 0, "alpha": 16}) is None
    assert LoRASettings.from_config(None) is None
    assert LoRASettings.from_config({"rank": 4}).alpha == 4.0
    with pytest.raises(ValueError, match=r"trainer\.lora\.rank"):
        LoRASettings.from_config({"rank": -1})
    model = _micro_sam2()
    with pytest.raises(ValueError, match=r"trainer\.lora\.target_modules.*qvk"):
        add_lora_adapters(model, LoRASettings(rank=2, alpha=2, target_modules=("qkv", "qvk")))


def test_default_targets_are_the_attention_and_mlp_projections():
    model = _micro_sam2()
    total = sum(p.numel() for p in model.parameters())
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    adapted = add_lora_adapters(model, LoRASettings(rank=RANK, alpha=8))
    assert all(any(name.endswith("." + t) for t in DEFAULT_TARGET_MODULES) for name in adapted)
    expected = {
        n
        for n in linears
        if n.endswith((".qkv", ".attn.proj", "_proj", ".linear1", ".linear2")) or ".mlp.layers." in n
    }
    # Heads stay as they are: obj_ptr_proj / obj_ptr_tpos_proj are projections but not attention or MLP ones.
    expected -= {n for n in expected if n.startswith(("obj_ptr_proj", "obj_ptr_tpos_proj"))}
    assert set(adapted) == expected
    assert any(n.startswith("image_encoder.trunk.") for n in adapted)
    assert any(n.startswith("memory_attention.") for n in adapted)
    assert any(n.startswith("sam_mask_decoder.transformer.") for n in adapted)
    per_layer = sum(RANK * (linears[n].in_features + linears[n].out_features) for n in adapted)
    assert trainable_parameter_count(model) == per_layer
    assert sum(p.numel() for p in model.parameters()) == total + per_layer
    assert all(p.requires_grad == is_adapter_key(n) for n, p in model.named_parameters())


def test_lora_run_changes_only_adapters_and_merged_checkpoint_matches(tmp_path, base_checkpoint, capsys):
    log_dir = tmp_path / "run"
    cfg = compose_training_config(TRAIN_CONFIG, _overrides(tmp_path, base_checkpoint, log_dir))
    trainer = instantiate(cfg.trainer, _recursive_=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    base = torch.load(base_checkpoint, weights_only=True)["model"]
    trainer.run()
    after = trainer.model.state_dict()

    adapters = sorted(k for k in after if is_adapter_key(k))
    assert adapters and trainer.steps == 2
    for key, value in after.items():
        if is_adapter_key(key):
            assert not torch.equal(value, before[key]), f"adapter {key} did not train"
        else:
            assert torch.equal(value, before[key]), f"base weight {key} changed"
            assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key

    saved = torch.load(log_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert sorted(saved["model"]) == adapters, "the training checkpoint must hold the adapters alone"
    assert saved["lora"]["rank"] == RANK and saved["lora"]["alpha"] == 8.0
    assert all(torch.equal(saved["model"][k], after[k]) for k in adapters)

    # The merged checkpoint is a plain SAM 2 checkpoint: build_sam2 loads it strictly.
    merged_path = log_dir / "checkpoints" / MERGED_CHECKPOINT_NAME
    merged_model = _micro_sam2(merged_path).eval()
    assert merged_model.state_dict().keys() == base.keys()
    changed = [k for k in base if not torch.equal(base[k], merged_model.state_dict()[k])]
    assert changed and all(k.endswith(".weight") for k in changed)

    # The merge tool gives the same merged checkpoint from the adapter file and the base checkpoint.
    from sam2.tools.merge_lora import main as merge_main

    micro = [f"--override={o}" for o in [*MICRO_MODEL_OVERRIDES, f"model.image_size={RESOLUTION}"]]
    common = ["--sam2_cfg", MODEL_CONFIG, "--base_checkpoint", str(base_checkpoint), *micro]
    tool_out = tmp_path / "merged_by_tool.pt"
    adapters_path = str(log_dir / "checkpoints" / "checkpoint.pt")
    assert merge_main([*common, "--adapter_checkpoint", adapters_path, "--output", str(tool_out)]) == 0
    by_tool = torch.load(tool_out, weights_only=True)["model"]
    by_trainer = torch.load(merged_path, weights_only=True)["model"]
    assert by_tool.keys() == by_trainer.keys()
    assert all(torch.equal(by_tool[k], by_trainer[k]) for k in by_tool)
    bad = [*common, "--adapter_checkpoint", str(base_checkpoint), "--output", str(tmp_path / "x.pt")]
    assert merge_main(bad) == 2
    assert "not a LoRA adapter checkpoint" in capsys.readouterr().err

    # Base + adapters (built from the base checkpoint and the adapter-only checkpoint) against merged:
    # the same logits on a clip (image encoder, memory attention and mask decoder all adapted).
    unmerged = _micro_sam2(base_checkpoint)
    merged_sd = merge_adapter_checkpoint(unmerged, saved, source="checkpoint.pt")
    assert all(torch.equal(merged_sd[k], merged_model.state_dict()[k]) for k in merged_sd)
    train_model_unmerged = trainer.model.eval()
    train_model_merged = instantiate(cfg.trainer.model, _convert_="all").eval()
    train_model_merged.load_state_dict(torch.load(merged_path, weights_only=True)["model"], strict=True)
    loader = trainer.train_data.get_loader(epoch=0)
    batch = next(iter(loader))
    train_model_base = instantiate(cfg.trainer.model, _convert_="all").eval()
    train_model_base.load_state_dict(base, strict=True)
    with torch.no_grad():
        out_a = train_model_unmerged(batch)
        out_b = train_model_merged(batch)
        out_base = train_model_base(batch)
    assert len(out_a) == batch.num_frames >= 3
    # The adapters matter at this tolerance: base alone computes other logits.
    moved = {
        key: max(
            float((torch.cat(a[key]) - torch.cat(o[key])).abs().max())
            for a, o in zip(out_a, out_base, strict=True)
        )
        for key in ("multistep_pred_ious", "multistep_object_score_logits")
    }
    assert min(moved.values()) > 1e-3, moved
    for frame_a, frame_b in zip(out_a, out_b, strict=True):
        assert {"pred_masks_high_res", "multistep_pred_ious"} <= frame_a.keys()
        for key, a in frame_a.items():
            b = frame_b[key]
            if isinstance(a, list) and a and all(isinstance(t, torch.Tensor) for t in a):
                a, b = torch.cat(a), torch.cat(b)
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_lora_cli_resumes_from_adapter_checkpoint_bit_identically(tmp_path, base_checkpoint, capsys):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    overrides = _overrides(
        tmp_path, base_checkpoint, full_dir, num_epochs=2, extra=["trainer.checkpoint.save_freq=1"]
    )
    assert main(["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *overrides]) == 0
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "checkpoint_1.pt", resumed_dir / "checkpoints" / "checkpoint.pt")
    resumed_overrides = [o for o in overrides if not o.startswith("launcher.experiment_log_dir=")]
    argv = ["-c", TRAIN_CONFIG, "--use-cluster", "0", "--num-gpus", "1", *resumed_overrides]
    assert main([*argv, f"launcher.experiment_log_dir={resumed_dir}"]) == 0
    assert "resumed from" in (resumed_dir / "logs" / "log_rank0.txt").read_text()
    full = torch.load(full_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(resumed_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert full["epoch"] == resumed["epoch"] == 2
    assert full["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    merged_full = torch.load(full_dir / "checkpoints" / MERGED_CHECKPOINT_NAME, weights_only=True)["model"]
    merged_resumed = torch.load(resumed_dir / "checkpoints" / MERGED_CHECKPOINT_NAME, weights_only=True)[
        "model"
    ]
    assert all(torch.equal(merged_full[k], merged_resumed[k]) for k in merged_full)

    # Adapters resumed onto other base weights would compute something else: refused, naming the setting.
    other_base = tmp_path / "other_base.pt"
    state = torch.load(base_checkpoint, weights_only=True)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, other_base)
    swapped = [o for o in resumed_overrides if "checkpoint_path=" not in o]
    swapped += [f"trainer.checkpoint.model_weight_initializer.state_dict.checkpoint_path={other_base}"]
    assert main([*argv[:6], *swapped, f"launcher.experiment_log_dir={resumed_dir}"]) == 2  # a bad setting
    assert "trained on other base weights" in capsys.readouterr().err


def test_adapter_checkpoint_of_other_settings_is_a_clear_error(tmp_path, base_checkpoint):
    model = _micro_sam2(base_checkpoint)
    foreign = {
        "lora": {"rank": 2, "alpha": 2, "target_modules": ["qkv"]},
        "model": {"x.lora_A.default.weight": torch.zeros(1)},
    }
    with pytest.raises(KeyError, match="same trainer.lora settings"):
        merge_adapter_checkpoint(model, foreign, source="foreign.pt")
    with pytest.raises(ValueError, match="not a LoRA adapter checkpoint"):
        merge_adapter_checkpoint(_micro_sam2(), {"model": {}}, source="plain.pt")


def test_pipeline_parameter_lora_rank_reaches_the_train_step():
    import yaml

    compiled = Path(__file__).resolve().parents[1] / "pipelines" / "sam2_finetune.yaml"
    spec = yaml.safe_load(compiled.read_text().split("\n---\n")[0])
    param = spec["root"]["inputDefinitions"]["parameters"]["lora_rank"]
    assert param["defaultValue"] == 0 and param["parameterType"] == "NUMBER_INTEGER"
    wired = spec["root"]["dag"]["tasks"]["train-model"]["inputs"]["parameters"]["lora_rank"]
    assert wired["componentInputParameter"] == "lora_rank"
    component = spec["components"]["comp-train-model"]["inputDefinitions"]["parameters"]["lora_rank"]
    assert component["defaultValue"] == 0


@pytest.mark.slow
def test_lora_memory_benchmark_prints_its_table():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    args = [
        "--sizes",
        "t",
        "--ranks",
        "4",
        "--resolution",
        "64",
        "--frames",
        "1",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "lora_memory.py"), *args],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split()[1]: line.split() for line in proc.stdout.splitlines() if line.startswith("t ")}
    assert set(rows) == {"full", "lora"}, proc.stdout
    assert rows["full"][2] == "38,962,498" and float(rows["full"][-4]) == 1.0
    assert 0 < float(rows["lora"][-4]) < 0.05, proc.stdout  # trainable share of full fine-tuning
