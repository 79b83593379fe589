"""Azure ML CLI v2 command-job YAML: what parses, what is refused, and how it reads."""

from pathlib import Path

import pytest

from compute.launcher import LaunchError, substitute
from jobs.spec import SpecError, parse
from studio.documents import load_yaml

COMPAT = Path(__file__).resolve().parents[2] / "shared" / "compat" / "azureml-examples"
BASICS = COMPAT / "cli" / "jobs" / "basics"

RUNNABLE = [
    "hello-world.yml",
    "hello-world-input.yml",
    "hello-world-output.yml",
    "hello-world-output-data.yml",
    "hello-world-env-var.yml",
    "hello-world-org.yml",
    "hello-code.yml",
    "hello-iris-file.yml",
    "hello-iris-literal.yml",
    "hello-mlflow.yml",
    "hello-git.yml",
    "hello-notebook.yml",
    # Data assets, datastore paths and storage URLs (tests/test_data_jobs.py runs such jobs).
    "hello-dataset.yml",
    "hello-iris-folder.yml",
    "hello-iris-datastore-file.yml",
    "hello-iris-datastore-folder.yml",
]
REFUSED = {
    "hello-interactive.yml": ("services", "not supported"),
    "hello-sweep.yml": ("type", "sweep jobs are not supported"),
    "hello-pipeline.yml": ("type", "pipeline jobs are not supported"),
    "hello-automl/hello-automl-job-basic.yml": ("type", "automl jobs are not supported"),
    "hello-model-as-input.yml": ("inputs.my_model.type", "mlflow_model inputs are not supported"),
}

needs_compat = pytest.mark.skipif(
    not BASICS.is_dir(), reason="shared/compat is not beside the checkout"
)


def errors_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse(load_yaml(text))
    return info.value.errors


@needs_compat
@pytest.mark.parametrize("filename", RUNNABLE)
def test_azure_examples_parse(filename: str) -> None:
    spec = parse(load_yaml((BASICS / filename).read_text()))
    assert spec.type == "command"
    assert spec.command


@needs_compat
@pytest.mark.parametrize(("filename", "expected"), sorted(REFUSED.items()))
def test_azure_examples_we_cannot_run_are_refused_by_field(
    filename: str, expected: tuple[str, str]
) -> None:
    with pytest.raises(SpecError) as info:
        parse(load_yaml((BASICS / filename).read_text()))
    parse_errors = info.value.errors
    errors = [(f, m) for f, m in parse_errors if f == expected[0] and expected[1] in m]
    assert errors, parse_errors


@needs_compat
def test_hello_world_org_fields_are_kept() -> None:
    spec = parse(load_yaml((BASICS / "hello-world-org.yml").read_text()))
    assert spec.display_name == "hello-world-example"
    assert spec.experiment_name == "hello-world-example"
    assert spec.tags == {"hello": "world"}
    assert "Markdown is supported" in (spec.description or "")


def test_every_problem_is_reported_with_its_path() -> None:
    errors = errors_of(
        "command: echo hi\n"
        "resources: {instance_count: many}\n"
        "limits: {timeout: -5}\n"
        "colour: blue\n"
        "distribution: {type: horovod}\n"
    )
    fields = {f for f, _ in errors}
    assert {"resources.instance_count", "limits.timeout", "colour", "distribution.type"} <= fields
    assert ("colour", "unknown field") in errors


def test_broken_yaml_says_where() -> None:
    errors = errors_of("command: [unclosed\n")
    assert errors[0][0] == "(document)"
    assert "line" in errors[0][1]


def test_a_document_must_be_a_mapping() -> None:
    assert errors_of("- just\n- a list\n") == [
        ("(document)", "must be a YAML mapping of job fields")
    ]


def test_command_is_required() -> None:
    assert ("command", "is required") in errors_of("display_name: x\n")


def test_wrong_types_name_the_field() -> None:
    errors = errors_of("command: echo\nenvironment_variables: {A: [1, 2]}\n")
    assert errors[0][0] == "environment_variables.A"


def test_undeclared_inputs_and_outputs_in_command() -> None:
    errors = errors_of("command: echo ${{inputs.missing}} > ${{outputs.nowhere}}/x\n")
    messages = " ".join(m for _, m in errors)
    assert "inputs.missing" in messages and "outputs.nowhere" in messages


def test_unknown_expressions_are_refused() -> None:
    errors = errors_of("command: echo ${{search_space.B}}\n")
    assert errors == [
        ("command", "${{search_space.B}} is not supported; use inputs.X, outputs.X or name")
    ]


def test_read_only_fields_are_refused() -> None:
    errors = errors_of("command: echo\nstatus: Completed\n")
    assert errors == [("status", "is set by the studio and cannot be submitted")]


def test_compute_prefix_is_dropped() -> None:
    assert parse(load_yaml("command: x\ncompute: azureml:local\n")).compute == "local"


def test_literal_inputs_read_as_azure_passes_them() -> None:
    spec = parse(
        load_yaml(
            "command: x\ninputs:\n  a: 42\n  b: true\n"
            "  c: {type: number, default: 0.5}\n  d: hello\n"
        )
    )
    assert spec.literal_values() == {"a": "42", "b": "True", "c": "0.5", "d": "hello"}


def test_substitution_and_optional_segments() -> None:
    command = "train --lr ${{inputs.lr}} $[[--epochs ${{inputs.epochs}}]] --out ${{outputs.model}}"
    values = {"inputs.lr": "0.1", "outputs.model": "/o/model"}
    assert substitute(command, values) == "train --lr 0.1  --out /o/model"
    values["inputs.epochs"] = "3"
    assert substitute(command, values) == "train --lr 0.1 --epochs 3 --out /o/model"


def test_substitution_without_a_value_is_an_error() -> None:
    with pytest.raises(LaunchError):
        substitute("echo ${{inputs.x}}", {})


def test_optional_segment_may_name_an_undeclared_input() -> None:
    spec = parse(load_yaml("command: run $[[--seed ${{inputs.seed}}]]\n"))
    assert spec.inputs == {}
