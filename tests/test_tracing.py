"""Chat turns as MLflow traces, written to a real MLflow server, found again through its API."""

import json

import mlflow

import workbench
from conftest import ANSWER, EXAMPLE, QUESTION
from workbench import paths, tracing


def test_each_turn_is_a_trace_with_question_images_answer_boxes_and_identity(demo_dir, mlflow_server):
    session = workbench.load("demo", name="traced")
    try:
        conv = session.chat(trace=True, log=False)
        assert conv.ask(QUESTION, [EXAMPLE]) == ANSWER
        conv.ask("Describe the image.")
        assert tracing.flush(120) and tracing.last_error is None, tracing.last_error
    finally:
        workbench.unload("traced")
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(tracing.EXPERIMENT)
    traces = mlflow.search_traces(locations=[experiment.experiment_id], return_type="list",
                                  filter_string="tags.session = 'traced'", order_by=["timestamp_ms ASC"])
    assert len(traces) == 2
    span = traces[0].data.spans[0]
    assert span.span_type == "CHAT_MODEL"
    assert span.inputs["question"] == QUESTION and span.inputs["image_sources"] == [str(EXAMPLE)]
    # the JPEG thumbnail: MLflow keeps a data URI as an attachment of the trace, shown as an image
    image = span.inputs["images"][0]
    assert image.startswith("mlflow-attachment://") and "content_type=image%2Fjpeg" in image, image
    assert span.outputs["answer"] == ANSWER
    assert span.outputs["boxes"] == [{"label": "the red circle", "boxes": [[127, 250, 444, 585]]}]
    attrs = span.attributes
    assert attrs["model"] == "demo" and attrs["adapter"] == "" and attrs["answer_tokens"] > 0
    assert attrs["prompt_tokens"] > 256 and 0 < attrs["latency_s"] and attrs["first_token_s"] <= attrs["latency_s"]
    assert traces[0].info.tags["model"] == "demo"
    assert traces[1].data.spans[0].inputs["images"] == []  # the follow-up brought no image


def test_tracing_is_a_lasting_choice_and_off_means_nothing_is_written(demo_dir, mlflow_server):
    assert not tracing.enabled()  # the test home turned it off (conftest)
    tracing.enable()
    try:
        assert json.loads((paths.home() / "settings.json").read_text())["trace_chats"] is True
        assert tracing.enabled()
    finally:
        tracing.disable()
    session = workbench.load("demo", name="untraced")
    try:
        session.chat(log=False).ask(QUESTION, [EXAMPLE])
        tracing.flush(60)
    finally:
        workbench.unload("untraced")
    experiment = mlflow.MlflowClient(mlflow_server.uri).get_experiment_by_name(tracing.EXPERIMENT)
    if experiment is not None:
        assert not mlflow.search_traces(locations=[experiment.experiment_id], return_type="list",
                                        filter_string="tags.session = 'untraced'")
