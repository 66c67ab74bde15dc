"""recsparse.config: YAML + dotted overrides onto typed dataclasses; every bad value is named (field, file:line)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from recsparse.config import Config, apply_overrides, build, load
from recsparse.errors import ConfigError
from recsparse.pipelines.config import TrainConfig, TrainerConfig, load_config

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner(Config):
    k: int = 1
    ratio: float = 0.5
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer(Config):
    name: str = "x"
    flag: bool = False
    sizes: list[int] = field(default_factory=lambda: [1])
    opt: int | None = None
    where: Path = Path(".")
    extra: dict[str, float] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        if self.inner.k > 100:
            raise ValueError(f"inner.k must be <= 100, got {self.inner.k}")


def test_a_new_dataclass_field_is_loadable_overridable_and_typed(tmp_path):
    p = tmp_path / "o.yaml"
    p.write_text("name: run\ninner:\n  k: 3\n  ratio: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string
    o = load(Outer, p, ["inner.kind=b", "sizes=[2, 3]", "opt=7", "where=out/x", "extra.a=1", "flag=true"])
    assert o.inner == Inner(k=3, ratio=0.001, kind="b")
    assert o.sizes == [2, 3] and o.opt == 7 and o.where == Path("out/x") and o.extra == {"a": 1.0} and o.flag is True
    assert isinstance(o.inner.ratio, float) and isinstance(o.extra["a"], float)
    assert load(Outer, p, ["opt=null"]).opt is None


@pytest.mark.parametrize("override,msg", [
    ("inner.k=2.5", r"inner\.k: expected an integer, got 2\.5 \(override inner\.k=2\.5\)"),
    ("inner.k=true", r"inner\.k: expected an integer, got True"),
    ("inner.k=abc", r"inner\.k: expected an integer, got 'abc'"),
    ("inner.ratio=.inf", r"inner\.ratio: expected a finite number"),
    ("inner.ratio=nan", r"inner\.ratio: expected a finite number"),
    ("inner.ratio=false", r"inner\.ratio: expected a number, got False"),
    ("inner.kind=c", r"inner\.kind: must be one of 'a', 'b'; got 'c'"),
    ("flag=maybe", r"flag: expected true or false, got 'maybe'"),
    ("flag=1", r"flag: expected true or false, got 1"),
    ("sizes=[20.7]", r"sizes\[0\]: expected an integer, got 20\.7"),
    ("sizes=3", r"sizes: expected a list of an integer"),
    ("opt=x", r"opt: expected an integer or null, got 'x'"),
    ("name=3", r"name: expected a string, got 3"),
    ("inner.kk=3", r"inner\.kk: unknown key; inner has k, kind, ratio"),
    ("nope=3", r"nope: unknown key; the config has"),
    ("inner=3", r"inner: expected a mapping of Inner fields"),
    ("inner.k=101", r"inner\.k must be <= 100, got 101 \(override inner\.k=101\)"),
    ("inner.k", r"must be KEY=VALUE"),
    ("inner..k=1", r"must be KEY=VALUE"),
    ("sizes=[1,", r"override 'sizes=\[1,': value is not valid YAML"),
])
def test_bad_override_names_field_and_source(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load(Outer, None, [override])


def test_bad_yaml_value_names_file_and_line(tmp_path):
    p = tmp_path / "o.yaml"
    p.write_text("name: run\ninner:\n  k: 3\n  ratio: .inf\n")
    with pytest.raises(ConfigError, match=rf"inner\.ratio: expected a finite number, got inf \({p}:4\)"):
        load(Outer, p)
    p.write_text("name: run\nsizes: [1, 2.5]\n")
    with pytest.raises(ConfigError, match=rf"sizes\[1\]: expected an integer, got 2\.5 \({p}:2\)"):
        load(Outer, p)
    p.write_text("name: run\ninner:\n  k: 1\n  k: 2\n")
    with pytest.raises(ConfigError, match=rf"{p}:4: duplicate key inner\.k"):
        load(Outer, p)


@pytest.mark.parametrize("text,line", [("inner:\n  k: 1\n   ratio: 2\n", 3), ("name: [a, b\nflag: true\n", 2),
                                       ("a: 1\n\tb: 2\n", 2)])
def test_malformed_yaml_names_file_and_line(tmp_path, text, line):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=rf"{p}:{line}:\d+: malformed YAML"):
        load(Outer, p)


def test_top_level_must_be_mapping(tmp_path):
    p = tmp_path / "l.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=rf"{p}: the top level must be a mapping"):
        load(Outer, p)
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        build(Outer, [1, 2])  # type: ignore[arg-type]


def test_python_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"TrainerConfig\.max_epochs: expected an integer, got 2\.5"):
        TrainerConfig(max_epochs=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Outer\.inner\.k: expected an integer"):
        Outer(inner={"k": "x"})  # type: ignore[arg-type]
    assert TrainerConfig(lr=1).lr == 1.0 and isinstance(TrainerConfig(lr=1).lr, float)


def test_check_value_for_hand_mapped_keys():
    from recsparse.config import check_value

    assert check_value(float, "1e-3", "trainer.lr") == 0.001
    assert check_value(list[int], (1, 2), "ks") == [1, 2]
    with pytest.raises(ConfigError, match=r"^trainer\.epochs: expected an integer, got 2\.5 \(c\.yaml\)$"):
        check_value(int, 2.5, "trainer.epochs", "c.yaml")


def test_override_into_scalar_is_rejected():
    with pytest.raises(ConfigError, match="'name.x=1': name is not a section"):
        apply_overrides({"name": "a"}, ["name.x=1"])


# --- the train schema (recsparse.pipelines.config) through the same system --------------------------------------

@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  dataset: gowalla\ntrainer:\n  max_epochs: 5\n  lr: 1e-3\n")
    return p


def test_train_lr_in_scientific_notation_is_a_float(cfg_file):
    cfg = load_config(cfg_file, ["trainer.lr=3e-4"])
    assert cfg.trainer.lr == pytest.approx(3e-4) and isinstance(cfg.trainer.lr, float)
    assert load_config(cfg_file).trainer.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("override,msg", [
    ("trainer.max_epochs=2.5", r"trainer\.max_epochs: expected an integer, got 2\.5"),
    ("trainer.max_epochs=true", r"trainer\.max_epochs: expected an integer, got True"),
    ("eval.ks=[20.7]", r"eval\.ks\[0\]: expected an integer, got 20\.7"),
    ("trainer.seed=abc", r"trainer\.seed: expected an integer, got 'abc'"),
    ("data.seed=abc", r"data\.seed: expected an integer, got 'abc'"),
    ("trainer.lr=.inf", r"trainer\.lr: expected a finite number, got inf"),
    ("trainer.progress_bar=maybe", r"trainer\.progress_bar: expected true or false, got 'maybe'"),
    ("trainer.epochs=3", r"trainer\.epochs: unknown key"),
    ("name=../../x", r"name must be one folder name .* got '\.\./\.\./x'"),
    ("name=/tmp/x", r"name must be one folder name"),
    ("name=..", r"name must be one folder name"),
    ("trainer.output_dir=runs/{nme}", r"trainer\.output_dir may use \{name\}"),
    ("data.split=leave_last_out", r"data\.val_fraction is for data\.split=given"),
    ("model.user_rows=1000", r"model\.user_rows does not apply to model\.mapper=full"),
    ("trainer.limit_train_batches=1.5", r"trainer\.limit_train_batches must be a fraction"),
])
def test_train_config_rejects_naming_the_field(cfg_file, override, msg):
    extra = ["data.val_fraction=0.1"] if override.startswith("data.split") else []
    with pytest.raises(ConfigError, match=msg):
        load_config(cfg_file, [*extra, override])


def test_train_validate_error_points_at_the_yaml_line(cfg_file):
    cfg_file.write_text("data:\n  dataset: gowalla\ntrainer:\n  max_epochs: 5\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=rf"trainer\.batch_size must be > 0, got 0 \({cfg_file}:5\)"):
        load_config(cfg_file)


def test_limit_train_batches_int_or_fraction(cfg_file):
    assert load_config(cfg_file, ["trainer.limit_train_batches=5"]).trainer.limit_train_batches == 5
    assert load_config(cfg_file, ["trainer.limit_train_batches=0.25"]).trainer.limit_train_batches == 0.25


@pytest.mark.parametrize("override,needle", [("trainer.max_epochs=2.5", "trainer.max_epochs: expected an integer"),
                                             ("name=../../x", "name must be one folder name")])
def test_train_cli_config_error_is_one_line_exit_2(cfg_file, override, needle):
    r = subprocess.run([sys.executable, "-m", "recsparse", "train", str(cfg_file), override],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recsparse: error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_round_trip_of_resolved_config(cfg_file):
    cfg = load_config(cfg_file, ["eval.ks=[20,50]"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
