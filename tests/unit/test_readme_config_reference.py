"""README's "Config reference" and "Evaluation config reference" list every key of the config dataclasses
(and no key they lack), with the dataclass default where a row documents one key: a key added to
vjepa_scale/config.py or vjepa_scale/eval/config.py without a row there fails this test."""
import dataclasses
import re
from pathlib import Path

import pytest

from vjepa_scale import config as C
from vjepa_scale.eval import config as E

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = {"model": C.ModelConfig, "mask": C.MaskConfig, "mask.types[i]": C.MaskSpec, "data": C.DataConfig,
            "data.datasets[i]": C.DatasetSpec, "optim": C.OptimConfig, "zero": C.ZeroConfig, "train": C.TrainConfig,
            "phases[i]": C.PhaseConfig, "phases[i].optim": C.PhaseOptimConfig}
# the evaluation recipe's sections with a table (`model` is training's ModelConfig: its table is the one above)
EVAL_SECTIONS = {"encoder": E.EncoderSource, "data": E.EvalDataConfig, "probe": E.ProbeConfig,
                 "optim": E.ProbeOptimConfig, "run": E.RunConfig}
REFERENCES = {"Config reference": SECTIONS, "Evaluation config reference": EVAL_SECTIONS}


def reference_tables(heading: str = "Config reference") -> tuple[dict[str, list[tuple[list[str], str]]], str]:
    """({section: [(keys of a row, its default cell)]}, the whole reference text) of README's `## heading`;
    a section is named by its `### `name`` heading (text after the name is its description)."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.index("\n## ", start + 1)
    ref = text[start:end]
    tables: dict[str, list[tuple[list[str], str]]] = {}
    section = None
    for line in ref.splitlines():
        m = re.match(r"### `([^`]+)`", line)
        if m:
            section = m.group(1)
            tables[section] = []
        elif section and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            tables[section].append((re.findall(r"`([^`]+)`", cells[0]), cells[1]))
    return tables, ref


def rendered(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return str(list(value))
    if value == "":
        return '""'
    return str(value)


def default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def test_every_config_section_has_a_table():
    tables, ref = reference_tables()
    assert set(tables) == set(SECTIONS)
    top = {f.name for f in dataclasses.fields(C.Config)}
    assert top == {"model", "mask", "data", "optim", "zero", "train", "phases", "deepspeed"}
    assert "`deepspeed`" in ref


def test_every_eval_config_section_is_documented():
    tables, ref = reference_tables("Evaluation config reference")
    assert set(tables) == set(EVAL_SECTIONS) | {"model"}
    top = {f.name for f in dataclasses.fields(E.EvalConfig)}
    assert top == set(EVAL_SECTIONS) | {"model"}
    assert tables["model"] == [] and "](#model)" in ref  # the training table, linked


@pytest.mark.parametrize("heading,section", [(h, s) for h, sections in REFERENCES.items() for s in sorted(sections)])
def test_every_key_has_a_row_with_its_default(heading, section):
    tables, _ = reference_tables(heading)
    cls = REFERENCES[heading][section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    documented = [k for keys, _ in tables[section] for k in keys]
    missing = [k for k in fields if k not in documented]
    assert not missing, f"README {heading}, `{section}`: no row for {missing}"
    unknown = [k for k in documented if k not in fields]
    assert not unknown, f"README {heading}, `{section}`: {unknown} are not keys of {cls.__name__}"
    for keys, default in tables[section]:
        value = default_of(fields[keys[0]])
        plain = re.fullmatch(r"`([^`]*)`", default)
        if len(keys) == 1 and plain and not dataclasses.is_dataclass(value) and not isinstance(value, (list, dict)):
            assert plain.group(1) == rendered(value), f"{heading}, `{section}.{keys[0]}`: README says {default}"
