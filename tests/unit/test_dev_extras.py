"""The dev-extras policy (helpers.extras): which packages it covers and when a missing one is an error.
The policy end to end, in a pytest session of its own: integration/test_dev_extras_session.py."""
import pytest

from helpers.extras import (dev_requirements, extras_required, import_name, importable, missing_dev_extras, needs,
                            require)


def test_covers_everything_dev_installs():
    reqs = dev_requirements()
    assert {"deepspeed", "triton", "transformers", "av", "pytest"} <= set(reqs)
    assert any(r.startswith("nvidia-dali") for r in reqs)
    assert [import_name(p) for p in ("nvidia-dali-cuda130", "pyyaml", "deepspeed")] == ["nvidia.dali", "yaml",
                                                                                         "deepspeed"]


def test_missing_package_is_found_without_importing(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text('from setuptools import setup\nsetup(name="x", install_requires=["numpy>=1"],\n'
                     '      extras_require={"dev": ["no-such-package-vjepa[x]>=2; python_version>\'3\'"],\n'
                     '                      "other": ["not-in-dev"]})\n')
    assert dev_requirements(setup) == ["numpy", "no-such-package-vjepa"]
    assert missing_dev_extras(setup) == [("no-such-package-vjepa", "no_such_package_vjepa")]
    assert importable("json") and not importable("nvidia_not_here.dali") and not importable("no_such_package_vjepa")


@pytest.mark.parametrize("env,strict", [({}, False), ({"CI": "true"}, True), ({"CI": "false"}, False),
                                        ({"VJEPA_REQUIRE_EXTRAS": "1"}, True), ({"VJEPA_REQUIRE_EXTRAS": "0"}, False)])
def test_ci_or_the_switch_makes_extras_required(monkeypatch, env, strict):
    for k in ("CI", "VJEPA_REQUIRE_EXTRAS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert extras_required() is strict
    assert needs("no_such_module_vjepa").args[0] is not strict  # the skip condition
    with pytest.raises(pytest.fail.Exception if strict else pytest.skip.Exception,
                       match=r"no_such_module_vjepa is not installed .*pip install -e \.\[dev\]"):
        require("no_such_module_vjepa")
    assert require("json").dumps([]) == "[]"
