"""Config: every option of every group composes into the typed schema, and every field lands in
`transformers.TrainingArguments` where it belongs; `--help` / `--cfg job` stay torch-free."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest
from conftest import conf_dir
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from vicuna_sft import config as C
from vicuna_sft.compat.transformers import checkpointing_argument
from vicuna_sft.config import register_configs, to_config
from vicuna_sft.errors import UserError
from vicuna_sft.training.arguments import to_training_arguments
from vicuna_sft.validation import ConfigError, gradient_accumulation

WRAP = ["LlamaDecoderLayer"]  # what LlamaForCausalLM._no_split_modules names
CKPT = checkpointing_argument()  # activation_checkpointing (transformers >= 5.24) or gradient_checkpointing
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def conf_groups() -> dict[str, list[str]]:
    root = conf_dir()
    return {
        d.name: sorted(f.name[: -len(".yaml")] for f in d.iterdir() if f.name.endswith(".yaml"))
        for d in root.iterdir()
        if d.is_dir() and d.name not in ("hydra", "__pycache__")
    }


GROUPS = conf_groups()
OPTIONS = [(g, o) for g, opts in sorted(GROUPS.items()) for o in opts]


@pytest.fixture(scope="module")
def make(tmp_path_factory: pytest.TempPathFactory):
    """compose(overrides) -> DictConfig of the primary `config`, output dir in tmp."""
    out = tmp_path_factory.mktemp("out")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):

        def _compose(*overrides: str, output_dir: bool = True):
            extra = [f"trainer.output_dir={out}"] if output_dir else []
            return compose("config", overrides=[*extra, *overrides])

        yield _compose


class Recorder:
    """Stands in for TrainingArguments where the real class would check the hardware (bf16,
    fp16, tf32, FSDP need a GPU): records what it was given."""

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch):
    import transformers

    # resolving a lazy attribute the first time can replace sys.modules["transformers"] (transformers 5):
    # patch the module `from transformers import ...` will see, whichever test runs first
    transformers.TrainingArguments  # noqa: B018
    monkeypatch.setattr(sys.modules["transformers"], "TrainingArguments", Recorder)

    def _args(cfg: C.Config, world_size: int = 1, wrap_classes: list[str] | None = WRAP) -> dict:
        cfg.distributed.nproc_per_node = world_size  # the layout planned before launching (process.layout)
        return to_training_arguments(cfg, wrap_classes=wrap_classes).kwargs

    return _args


def test_groups_are_the_documented_ones():
    assert {"model", "data", "attention", "fsdp", "optimizer", "experiment"} <= set(GROUPS)
    assert {"tiny", "vicuna_7b", "llama2_7b", "llama2_13b"} <= set(GROUPS["model"])
    assert {"sample", "sharegpt"} <= set(GROUPS["data"])
    assert {"eager", "sdpa"} <= set(GROUPS["attention"])
    assert {"none", "full_shard"} <= set(GROUPS["fsdp"])
    assert "adamw" in GROUPS["optimizer"]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_converts(make, recorded, group: str, option: str, tmp_path):
    dcfg = make(f"{group}={option}")
    if OmegaConf.is_missing(dcfg.data, "path"):  # data=sharegpt: the path is the user's
        dcfg = make(f"{group}={option}", f"data.path={tmp_path / 'conv.json'}")
    cfg = to_config(dcfg)
    assert type(cfg) is C.Config
    assert isinstance(cfg.model, C.ModelConfig) and isinstance(cfg.data, C.DataConfig)
    assert isinstance(cfg.attention.implementation, C.AttentionImpl)
    assert isinstance(cfg.fsdp.strategy, C.FsdpStrategy)
    assert isinstance(cfg.optimizer.scheduler, C.Scheduler)
    assert isinstance(cfg.trainer.precision, C.Precision)
    if group in ("attention", "fsdp"):  # one YAML per enum member, named after it
        member = cfg.attention.implementation if group == "attention" else cfg.fsdp.strategy
        assert member.value == option
    try:
        kwargs = recorded(cfg, world_size=8)
    except ConfigError as e:  # a deliberate refusal for this layout (e.g. HSDP on one node)
        assert f"{group}={option}" in str(e)
    else:
        assert kwargs["output_dir"] == cfg.trainer.output_dir
        assert kwargs["learning_rate"] == cfg.optimizer.lr


def test_enum_groups_match_their_files():
    assert set(GROUPS["attention"]) == {m.value for m in C.AttentionImpl}
    assert set(GROUPS["fsdp"]) == {m.value for m in C.FsdpStrategy}


def test_default_is_tiny_on_the_sample_with_the_vicuna_recipe(make):
    cfg = to_config(make())
    assert cfg.model.builtin == C.Builtin.tiny and cfg.model.name_or_path.endswith("tiny-llama")
    assert os.path.isfile(cfg.data.path) and cfg.data.path.endswith("sample_conversations.json")
    o = cfg.optimizer
    # the lr is the tiny model's (random weights: conf/model/tiny.yaml), the rest Vicuna's recipe
    assert (o.lr, o.weight_decay, o.warmup_ratio, o.max_grad_norm) == (3e-3, 0.0, 0.03, 1.0)
    assert o.scheduler == C.Scheduler.cosine
    assert cfg.data.template == "vicuna_v1.1"
    assert cfg.fsdp.strategy == C.FsdpStrategy.none


@pytest.mark.parametrize(
    ("overrides", "lr"),
    [
        ((), 3e-3),  # the builtin tiny model: random weights need a large lr (conf/model/tiny.yaml)
        (("experiment=smoke",), 3e-3),
        (("model=tiny", "optimizer.lr=1e-4"), 1e-4),  # the command line still wins
        (("model=vicuna_7b",), 2e-5),  # a pretrained model: the schema's Vicuna lr, tiny's does not leak
        (("experiment=vicuna_7b", "data.path=/d.json"), 2e-5),
        (("experiment=vicuna_7b_lora", "data.path=/d.json"), 2e-5),
    ],
)
def test_learning_rate_follows_the_model(make, overrides, lr):
    assert to_config(make(*overrides)).optimizer.lr == lr


def test_the_schema_lr_is_vicunas_and_only_the_tiny_model_sets_another():
    """Each default in one place: 2e-5 in the schema, 3e-3 in conf/model/tiny.yaml, nowhere else."""
    assert C.OptimizerConfig().lr == 2e-5
    setting = [
        p.relative_to(conf_dir()).as_posix()
        for p in conf_dir().rglob("*.yaml")
        if re.search(r"^\s+lr:", p.read_text(), re.M)
    ]
    assert setting == ["model/tiny.yaml"]


def test_unknown_keys_are_refused_at_any_depth_but_known_ones_pass_with_plus(make):
    """`+`/`++` bypass struct mode in Hydra; to_config refuses what the schema lacks, in a group and
    at the root, while `++` on a key the schema has stays an ordinary override, and free-form
    fields (trainer.callbacks, data.path's sources) are not mistaken for unknown keys."""
    with pytest.raises(
        UserError, match=r"^unknown config key\(s\): optimizer.lrr \(did you mean optimizer.lr\?\)$"
    ):
        to_config(make("+optimizer.lrr=1"))
    with pytest.raises(UserError, match=r"^unknown config key\(s\): trainr \(did you mean trainer\?\)$"):
        to_config(make("++trainr=1"))
    cfg = to_config(
        make(
            "++optimizer.lr=1e-3",
            "+trainer.callbacks=[{_target_: transformers.EarlyStoppingCallback, early_stopping_patience: 3}]",
            "data.path=[{path: a.json, weight: 2}]",
        )
    )
    assert cfg.optimizer.lr == 1e-3 and cfg.trainer.callbacks[0]["early_stopping_patience"] == 3
    assert not set(vars(cfg.trainer)) - {f for f in C.TrainerConfig.__dataclass_fields__}


def test_output_dir_defaults_to_the_hydra_run_dir(make, tmp_path):
    dcfg = make(output_dir=False)
    full = compose("config", return_hydra_config=True)
    assert full.hydra.run.dir == "outputs/tiny_sample"  # deterministic from the choices, no timestamp
    with open_dict(full):
        full.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(full)
    assert to_config(full).trainer.output_dir == str(tmp_path)
    assert type(to_config(full)) is C.Config  # the hydra node is dropped, the type kept
    assert OmegaConf.to_container(dcfg.trainer)["output_dir"] == "${hydra:runtime.output_dir}"


def test_vicuna_7b_experiment_is_fastchats_recipe(make, recorded):
    cfg = to_config(make("experiment=vicuna_7b", "data.path=/data/sharegpt.json"))
    assert cfg.model.name_or_path == "lmsys/vicuna-7b-v1.5"
    assert cfg.trainer.global_batch_size == 128
    assert cfg.optimizer.lr == 2e-5
    assert cfg.trainer.num_train_epochs == 3
    assert cfg.data.max_length == 2048
    assert cfg.data.long == C.LongMode.split and not cfg.data.lazy and cfg.data.cache
    assert cfg.optimizer.warmup_ratio == 0.03 and cfg.optimizer.scheduler == C.Scheduler.cosine
    assert cfg.trainer.precision == C.Precision.bf16
    assert cfg.model.activation_checkpointing is True
    assert cfg.fsdp.strategy == C.FsdpStrategy.full_shard
    # FastChat ran it on 4 GPUs as 2 per device x 16 accumulation; on 8 GPUs: 2 x 8 x 8
    assert gradient_accumulation(cfg.trainer, 4) == 16
    kw = recorded(cfg, world_size=8)
    assert kw["gradient_accumulation_steps"] == 8 and kw["per_device_train_batch_size"] == 2
    assert kw["bf16"] is True and kw["fp16"] is False and kw["tf32"] is True
    assert kw["learning_rate"] == 2e-5 and kw["num_train_epochs"] == 3
    assert kw["warmup_steps"] == 0.03 and kw["lr_scheduler_type"] == "cosine"
    assert kw["fsdp"] is True and kw["fsdp_config"]["version"] == 2
    assert kw["fsdp_config"]["transformer_layer_cls_to_wrap"] == WRAP
    assert kw["fsdp_config"]["activation_checkpointing"] is True
    assert kw[CKPT] is False  # under FSDP it belongs to FSDP


EVERY_FIELD = [
    "optimizer.lr=3e-4",
    "optimizer.weight_decay=0.1",
    "optimizer.warmup_ratio=0.1",
    "optimizer.scheduler=linear",
    "optimizer.max_grad_norm=0.5",
    "optimizer.adam_beta1=0.8",
    "optimizer.adam_beta2=0.95",
    "optimizer.eps=1e-6",
    "optimizer.name=adamw_torch",
    "trainer.per_device_train_batch_size=4",
    "trainer.per_device_eval_batch_size=8",
    "trainer.gradient_accumulation_steps=3",
    "trainer.num_train_epochs=2",
    "trainer.max_steps=7",
    "trainer.logging_steps=2",
    "trainer.save_strategy=steps",
    "trainer.save_steps=5",
    "trainer.save_total_limit=4",
    "trainer.eval_strategy=steps",
    "trainer.eval_steps=6",
    "trainer.metric_for_best_model=accuracy",
    "trainer.seed=123",
    "trainer.dataloader_num_workers=1",
    "trainer.report_to=[none]",
    "model.activation_checkpointing=true",
    "trainer.use_cpu=true",
]


def test_every_field_lands_in_the_real_training_arguments(make):
    from transformers import TrainingArguments

    cfg = to_config(make(*EVERY_FIELD))
    args = to_training_arguments(cfg, wrap_classes=WRAP)
    assert isinstance(args, TrainingArguments)
    expected = {
        "output_dir": cfg.trainer.output_dir,
        "learning_rate": 3e-4,
        "weight_decay": 0.1,
        "warmup_steps": 0.1,  # transformers 5: a float < 1 is a ratio of the total steps
        "max_grad_norm": 0.5,
        "adam_beta1": 0.8,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-6,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "gradient_accumulation_steps": 3,
        "num_train_epochs": 2,
        "max_steps": 7,
        "logging_steps": 2,
        "save_steps": 5,
        "save_total_limit": None,  # rotated by our callback once the newest checkpoint is complete
        "eval_steps": 6,
        "metric_for_best_model": "accuracy",
        "seed": 123,
        "data_seed": 123,
        "dataloader_num_workers": 1,
        "report_to": [],
        CKPT: True,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "remove_unused_columns": False,
    }
    assert {k: getattr(args, k) for k in expected} == expected
    assert not args.fsdp and not args.bf16 and not args.fp16
    assert args.lr_scheduler_type.value == "linear"
    assert args.optim.value == "adamw_torch"
    assert args.save_strategy.value == "steps" and args.eval_strategy.value == "steps"


def test_defaults_land_in_the_real_training_arguments(make):
    args = to_training_arguments(to_config(make("trainer.use_cpu=true")))
    assert args.learning_rate == 3e-3 and args.warmup_steps == 0.03  # lr: the tiny model's
    assert args.lr_scheduler_type.value == "cosine" and args.max_grad_norm == 1.0
    assert args.per_device_eval_batch_size == args.per_device_train_batch_size == 2  # eval: same as train
    assert args.eval_strategy.value == "no" and args.save_total_limit is None
    assert args.report_to == ["tensorboard"] and getattr(args, CKPT) is False and not args.fsdp


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16"), [("fp32", False, False), ("bf16", True, False), ("fp16", False, True)]
)
def test_precision(make, recorded, precision, bf16, fp16):
    kw = recorded(to_config(make(f"trainer.precision={precision}", "trainer.tf32=false")))
    assert (kw["bf16"], kw["fp16"], kw["tf32"]) == (bf16, fp16, False)


@pytest.mark.parametrize("strategy", ["no", "steps", "epoch"])
def test_strategies(make, recorded, strategy):
    kw = recorded(to_config(make(f"trainer.save_strategy={strategy}", f"trainer.eval_strategy={strategy}")))
    assert kw["save_strategy"] == kw["eval_strategy"] == strategy


def test_tf32_unset_is_left_to_transformers(make, recorded):
    assert recorded(to_config(make()))["tf32"] is None
    assert recorded(to_config(make("trainer.tf32=true")))["tf32"] is True


def test_global_batch_size_gives_accumulation_and_refuses_what_does_not_divide(make, recorded):
    cfg = to_config(make("trainer.global_batch_size=128", "trainer.per_device_train_batch_size=4"))
    assert recorded(cfg, world_size=1)["gradient_accumulation_steps"] == 32
    assert recorded(cfg, world_size=4)["gradient_accumulation_steps"] == 8
    with pytest.raises(ConfigError, match=r"global_batch_size=128 is not divisible .* = 12"):
        recorded(cfg, world_size=3)
    both = to_config(make("trainer.global_batch_size=16", "trainer.gradient_accumulation_steps=3"))
    with pytest.raises(ConfigError, match="contradicts"):
        recorded(both)


def test_the_batch_must_fit_in_the_training_set(make):
    from vicuna_sft.validation import check_batch_fits

    t = to_config(make("trainer.per_device_train_batch_size=4")).trainer
    check_batch_fits(t, 4, 1)  # exactly one full batch: fine
    with pytest.raises(ConfigError, match=r"= 8 samples per batch, but the training set has only 7"):
        check_batch_fits(t, 7, 2)  # 4 per device x 2 ranks
    g = to_config(make("trainer.per_device_train_batch_size=4", "trainer.global_batch_size=16")).trainer
    check_batch_fits(g, 16, 1)
    with pytest.raises(
        ConfigError, match=r"a global batch of 16 samples \(4 per batch x 4 accumulation steps\)"
    ):
        check_batch_fits(g, 15, 1)


def test_max_steps_and_epochs(make, recorded):
    kw = recorded(to_config(make("trainer.num_train_epochs=1.5")))
    assert (kw["num_train_epochs"], kw["max_steps"]) == (1.5, -1)
    kw = recorded(to_config(make("trainer.max_steps=10")))
    assert kw["max_steps"] == 10


def test_activation_checkpointing_without_and_with_fsdp(make, recorded):
    plain = recorded(to_config(make("model.activation_checkpointing=true")))
    assert plain[CKPT] is True and "fsdp" not in plain
    sharded = recorded(to_config(make("model.activation_checkpointing=true", "fsdp=full_shard")))
    assert sharded[CKPT] is False
    assert sharded["fsdp_config"]["activation_checkpointing"] is True


def test_full_shard_wraps_the_models_own_layer_class(make, recorded):
    cfg = to_config(make("fsdp=full_shard"))
    kw = recorded(cfg, wrap_classes=["MistralDecoderLayer"])
    assert kw["fsdp"] is True
    fc = kw["fsdp_config"]
    assert fc["version"] == 2 and fc["transformer_layer_cls_to_wrap"] == ["MistralDecoderLayer"]
    assert fc["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fc["state_dict_type"] == "FULL_STATE_DICT"
    assert recorded(to_config(make("fsdp=full_shard", "fsdp.wrap_classes=[MyLayer]")))["fsdp_config"][
        "transformer_layer_cls_to_wrap"
    ] == ["MyLayer"]
    with pytest.raises(ConfigError, match="wrap"):
        recorded(cfg, wrap_classes=[])


def run_cli(*args: str, tmp_path) -> subprocess.CompletedProcess:
    """`python -m vicuna_sft ARGS`, reporting at exit whether torch was imported."""
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('TORCH_IMPORTED=%s' % ('torch' in sys.modules), file=sys.stderr))\n"
        f"sys.argv = ['vicuna_sft', *{list(args)!r}]\n"
        "runpy.run_module('vicuna_sft', run_name='__main__', alter_sys=True)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=60
    )


def test_help_lists_groups_and_options_without_torch(tmp_path):
    r = run_cli("--help", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "TORCH_IMPORTED=False" in r.stderr
    for group, options in GROUPS.items():
        assert f"{group}: {', '.join(options)}" in r.stdout
    assert "optimizer:" in r.stdout and "lr: 0.003" in r.stdout  # the tiny model's (conf/model/tiny.yaml)
    # only groups a user can choose from: the typed schema is not one (issue 10, item 17)
    listed = r.stdout.split("== Config groups ==", 1)[1].split("== Config ==", 1)[0]
    groups = {line.split(":", 1)[0] for line in listed.splitlines() if re.match(r"^\w+: ", line)}
    assert groups == set(GROUPS) and "schema" not in r.stdout


@pytest.mark.parametrize(
    ("overrides", "run_dir"),
    [
        ((), "outputs/tiny_sample"),  # the bundled sample: the option's name is enough
        (("data=sharegpt", "data.path=/d/sharegpt_clean.json"), "outputs/tiny_sharegpt-sharegpt_clean"),
        (("data=sharegpt", "data.path=/d/other.v2.jsonl"), "outputs/tiny_sharegpt-other.v2"),
        (("data.path=/d/mine.json",), "outputs/tiny_sample-mine"),
        (
            ("data=sharegpt", "data.path=[/d/a.json,{path: /d/b.jsonl, weight: 2}]"),
            "outputs/tiny_sharegpt-a+b",
        ),
        (("data=sharegpt",), "outputs/tiny_sharegpt"),  # data.path missing: reported by to_config
        # what makes runs incompatible gets its own directory (issue 21, item 1): another model
        # than the option's, another tokenizer, an adapter
        (("model.name_or_path=/m/my-llama/",), "outputs/my-llama_sample"),
        (("model=vicuna_7b", "model.name_or_path=lmsys/other-7b"), "outputs/other-7b_sample"),
        (("model=vicuna_7b",), "outputs/vicuna_7b_sample"),
        (("model.tokenizer=/t/spm",), "outputs/tiny-tok-spm_sample"),
        (("adapter=lora",), "outputs/tiny_sample_lora"),
        (("experiment=vicuna_7b_lora", "data.path=/d/a.json"), "outputs/vicuna_7b_sharegpt-a_lora"),
    ],
)
def test_run_dir_names_the_data_file(make, overrides, run_dir):
    make()  # inside the module's Hydra context
    full = compose("config", overrides=list(overrides), return_hydra_config=True)
    assert full.hydra.run.dir == run_dir


def test_cfg_job_prints_the_composed_config_without_torch(tmp_path):
    r = run_cli("--cfg", "job", "optimizer.lr=1e-5", "experiment=smoke", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "TORCH_IMPORTED=False" in r.stderr
    printed = OmegaConf.create(r.stdout)
    assert printed.optimizer.lr == 1e-5
    assert printed.trainer.max_steps == 40
    assert set(printed) >= {"model", "data", "attention", "fsdp", "optimizer", "trainer"}


# trainer.args: any other TrainingArguments field, typed and checked at composition (issue 21, item 3)


def test_trainer_args_reach_the_real_training_arguments(make):
    from vicuna_sft.validation import checked

    cfg = checked(
        make("trainer.use_cpu=true", "trainer.args.warmup_steps=5", "trainer.args.neftune_noise_alpha=5")
    )
    args = to_training_arguments(cfg)
    # warmup_steps=5 steps replaces the ratio 0.03; an int 5 for a float field is coerced
    assert args.warmup_steps == 5 and args.neftune_noise_alpha == 5.0
    assert isinstance(args.neftune_noise_alpha, float)
    assert args.learning_rate == 3e-3  # the project's own fields are untouched


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a typo: refused, with the closest names
        (
            "trainer.args.neftune_noise_alfa=5",
            "trainer.args.neftune_noise_alfa: not a TrainingArguments field "
            "(did you mean neftune_noise_alpha?)",
        ),
        # a field the project sets: refused naming the project's key
        (
            "trainer.args.learning_rate=1e-3",
            "trainer.args.learning_rate: set by vicuna_sft: use optimizer.lr",
        ),
        ("trainer.args.output_dir=/x", "trainer.args.output_dir: set by vicuna_sft: use hydra.run.dir"),
        (
            "trainer.args.save_only_model=true",
            "trainer.args.save_only_model: refused: a checkpoint without optimizer state cannot be resumed",
        ),
        # a wrong type, checked against TrainingArguments' own annotation
        ("trainer.args.torch_compile=maybe", "trainer.args.torch_compile must be bool, got 'maybe'"),
        (
            "trainer.args.neftune_noise_alpha=loud",
            "trainer.args.neftune_noise_alpha must be float or null, got 'loud'",
        ),
        (
            "trainer.args.hub_strategy=sometimes",
            "trainer.args.hub_strategy must be one of ['end', 'every_save', ",
        ),
        (
            "trainer.args.warmup_steps=0.1",
            "trainer.args.warmup_steps must be a whole number of steps >= 0 "
            "(it replaces optimizer.warmup_ratio), got 0.1",
        ),
    ],
)
def test_trainer_args_are_refused_at_composition(make, override, message):
    from vicuna_sft.validation import checked

    with pytest.raises(ConfigError) as e:
        checked(make(override))
    assert message in str(e.value)


def test_trainer_args_refuses_exactly_what_the_mapping_sets(make):
    """Every TrainingArguments field the mapping sets is refused in trainer.args (naming its key),
    and every refused name is a real field in this transformers release."""
    import dataclasses

    from transformers import TrainingArguments

    from vicuna_sft.training.arguments import project_arguments
    from vicuna_sft.validation import TRAINER_ARGS_INVARIANT, TRAINER_ARGS_OWNED

    set_here = set()
    for overrides in ((), ("fsdp=full_shard",)):
        set_here |= set(project_arguments(to_config(make("trainer.use_cpu=true", *overrides)), WRAP))
    refused = set(TRAINER_ARGS_OWNED) | set(TRAINER_ARGS_INVARIANT)
    set_here.discard("warmup_steps")  # trainer.args.warmup_steps (steps) replaces optimizer.warmup_ratio
    assert set_here <= refused, set_here - refused
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    # gradient_checkpointing / activation_checkpointing: one of the two exists per release
    assert refused - fields <= {"gradient_checkpointing", "activation_checkpointing"}, refused - fields
