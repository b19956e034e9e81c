"""Config: defaults < YAML < overrides, dotted keys, type checks, unknown keys, tuples, save/load round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from vistok.config import from_dict, load_config, save_config, to_dict, valid_keys
from vistok.errors import VistokError


@dataclass(frozen=True)
class Opt:
    lr: float = 1e-3
    steps: int = 10
    flag: bool = False
    mode: Literal["cosine", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    note: str = "x"


@dataclass(frozen=True)
class Run:
    opt: Opt = field(default_factory=Opt)
    name: str = "run"
    limit: int | None = None
    widths: tuple[int, ...] = (8, 16)

    def __post_init__(self) -> None:
        if self.name == "forbidden":
            raise ValueError("name may not be 'forbidden'")


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_only():
    cfg = load_config(Run)
    assert cfg == Run()
    assert cfg.opt.lr == 1e-3 and cfg.opt.betas == (0.9, 0.95)


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = write_yaml(tmp_path, "name: from_yaml\nopt:\n  lr: 0.5\n  steps: 20\n")
    cfg = load_config(Run, path)
    assert (cfg.name, cfg.opt.lr, cfg.opt.steps, cfg.opt.flag) == ("from_yaml", 0.5, 20, False)  # flag: default
    cfg = load_config(Run, path, ["opt.steps=30", "opt.flag=true"])
    assert (cfg.name, cfg.opt.lr, cfg.opt.steps, cfg.opt.flag) == ("from_yaml", 0.5, 30, True)  # override beats YAML
    cfg = load_config(Run, None, ["opt.steps=30"])
    assert (cfg.name, cfg.opt.lr, cfg.opt.steps) == ("run", 1e-3, 30)


def test_nested_dotted_keys_keep_sibling_yaml_values(tmp_path):
    path = write_yaml(tmp_path, "opt:\n  lr: 0.25\n  note: kept\n")
    cfg = load_config(Run, path, ["opt.lr=0.125"])
    assert cfg.opt.lr == 0.125 and cfg.opt.note == "kept"
    assert isinstance(cfg.opt, Opt)


@dataclass(frozen=True)
class Outer:
    run: Run = field(default_factory=lambda: Run(opt=Opt(lr=0.5, note="preset"), name="preset"))


def test_overrides_layer_on_a_nested_default_factory_value(tmp_path):
    """A group's default (a preset from default_factory) keeps its other values when one key of it is set."""
    cfg = load_config(Outer, None, ["run.opt.steps=3"])
    assert (cfg.run.name, cfg.run.opt.lr, cfg.run.opt.note, cfg.run.opt.steps) == ("preset", 0.5, "preset", 3)
    cfg = load_config(Outer, write_yaml(tmp_path, "run:\n  name: yaml\n"), ["run.opt.lr=0.25"])
    assert (cfg.run.name, cfg.run.opt.lr, cfg.run.opt.note) == ("yaml", 0.25, "preset")
    assert load_config(Outer) == Outer()


def test_valid_keys_are_dotted():
    assert valid_keys(Run) == [
        "opt.lr", "opt.steps", "opt.flag", "opt.mode", "opt.betas", "opt.note", "name", "limit", "widths"
    ]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("opt.steps=1.5", "opt.steps"),
        ("opt.steps=abc", "not a int"),
        ("opt.lr=fast", "not a float"),
        ("opt.flag=maybe", "not a bool"),
        ("opt.mode=linear", "one of 'cosine', 'constant'"),
        ("opt.betas=[0.9]", "expected 2 values"),
        ("opt.betas=0.9", "expected a list"),
        ("opt.betas=[0.9,abc]", "opt.betas[1]"),
        ("opt=3", "expected a mapping"),
        ("name.sub=1", "config key 'name'"),
        ("limit=ten", "limit"),
    ],
)
def test_type_errors_name_key_and_type(override, fragment):
    with pytest.raises(VistokError) as err:
        load_config(Run, None, [override])
    msg = str(err.value)
    assert fragment in msg
    assert "\n" not in msg


def test_values_are_coerced_to_field_types():
    cfg = load_config(Run, None, ["opt.lr=2", "opt.steps=4.0", "opt.flag=yes", "opt.note=12", "limit=7",
                                  "widths=[1,2,3]"])
    assert cfg.opt.lr == 2.0 and isinstance(cfg.opt.lr, float)
    assert cfg.opt.steps == 4 and isinstance(cfg.opt.steps, int)
    assert cfg.opt.flag is True
    assert cfg.opt.note == "12"
    assert cfg.limit == 7
    assert cfg.widths == (1, 2, 3) and isinstance(cfg.widths, tuple)
    assert load_config(Run, None, ["opt.flag=False"]).opt.flag is False


def test_exponent_floats_without_a_dot(tmp_path):
    # YAML 1.1 reads `3e-4` as a string; a float field must still accept it (the scripts' help says train.lr=3e-4)
    assert load_config(Run, None, ["opt.lr=3e-4"]).opt.lr == pytest.approx(3e-4)
    assert load_config(Run, write_yaml(tmp_path, "opt:\n  lr: 1e30\n")).opt.lr == 1e30


def test_optional_field_accepts_null():
    assert load_config(Run, None, ["limit=5"]).limit == 5
    assert load_config(Run, None, ["limit=5", "limit=null"]).limit is None


def test_bool_rejects_numbers_for_int():
    with pytest.raises(VistokError, match="not a int"):
        from_dict(Run, {"opt": {"steps": True}})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(VistokError) as err:
        load_config(Run, None, ["opt.lrr=1"])
    msg = str(err.value)
    assert "opt.lrr" in msg
    for key in ("opt.lr", "opt.steps", "opt.betas"):
        assert key in msg
    with pytest.raises(VistokError) as err:
        load_config(Run, None, ["nmae=x"])
    assert "'nmae'" in str(err.value) and "name" in str(err.value) and "opt.lr" in str(err.value)


def test_unknown_key_in_yaml(tmp_path):
    with pytest.raises(VistokError, match="unknown config key 'opt.sched'.*valid keys"):
        load_config(Run, write_yaml(tmp_path, "opt:\n  sched: 1\n"))


def test_dotted_key_below_a_value():
    with pytest.raises(VistokError, match="'name' is not a group of keys"):
        load_config(Run, None, ["name=x", "name.sub=1"])


def test_override_without_equals_sign():
    with pytest.raises(VistokError, match="key=value"):
        load_config(Run, None, ["opt.lr"])


def test_tuple_parsing():
    cfg = load_config(Run, None, ["opt.betas=[0.9,0.99]"])
    assert cfg.opt.betas == (0.9, 0.99)
    assert isinstance(cfg.opt.betas, tuple) and all(isinstance(b, float) for b in cfg.opt.betas)
    assert load_config(Run, None, ["opt.betas=[1, 0]"]).opt.betas == (1.0, 0.0)


def test_bad_files(tmp_path):
    with pytest.raises(VistokError, match="does not exist"):
        load_config(Run, tmp_path / "missing.yaml")
    with pytest.raises(VistokError, match="not valid YAML"):
        load_config(Run, write_yaml(tmp_path, "opt: [unclosed\n"))
    with pytest.raises(VistokError, match="mapping"):
        load_config(Run, write_yaml(tmp_path, "- 1\n- 2\n"))


def test_post_init_errors_become_vistok_errors():
    with pytest.raises(VistokError, match="forbidden"):
        load_config(Run, None, ["name=forbidden"])


def test_save_config_round_trip(tmp_path):
    cfg = load_config(Run, None, ["opt.betas=[0.8,0.9]", "opt.lr=3e-4", "opt.mode=constant", "name=abc", "limit=3"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(Run, path)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert to_dict(cfg)["opt"]["betas"] == [0.8, 0.9]  # plain lists, YAML/JSON-serialisable
    assert "!!python" not in path.read_text()


def test_training_script_config_round_trip(tmp_path, fid_net_script):
    """The real fid_net config file loads, and its resolved config survives save/load."""
    module = fid_net_script
    repo = Path(__file__).resolve().parents[1]
    overrides = ["train.lr=3e-4", "model.widths=[8,16,16,32]", "model.groups=4"]
    cfg = load_config(module.Config, repo / "train" / "configs" / "fid_net.yaml", overrides)
    assert cfg.train.betas == (0.9, 0.99) and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.widths == (8, 16, 16, 32)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(module.Config, tmp_path / "c.yaml") == cfg
    with pytest.raises(VistokError, match="must divide by groups"):
        load_config(module.Config, None, ["model.groups=3"])
