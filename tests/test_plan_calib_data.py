"""One vocabulary for data: ``vltrim.plan(model, method, target, calib_data=..., task=...)`` for every data-driven
method (heads, taylor, mope, upop), the same plan as each method's own spelling with the loss compress derives from
the task (`vltrim.tasks.loss.search_loss`), and the same plan as compress's search; clear errors."""

from __future__ import annotations

import pytest
from test_quality_levers import sentence_data
from test_tasks_more import shape_data
from torch.utils.data import DataLoader

import vltrim
from vltrim.data import SyntheticCaptions
from vltrim.methods import get_method
from vltrim.run import runner
from vltrim.tasks import get_task
from vltrim.tasks.loss import search_loss, task_loss
from vltrim.zoo import tiny_model

FAST = {
    "heads": dict(num_batches=1, batch_size=8),
    "taylor": dict(num_batches=2, batch_size=8),
    "upop": dict(steps=2, interval=1, batch_size=8, progress=False),
    "mope": dict(group_size=16),
}
DATA_FREE = ["l1", "random", "magnitude", "lowrank", "distill"]


def case(name: str):
    """(model, the task that fits it, calibration data for it)."""
    model = tiny_model(name)
    if name == "BertModel":
        return model, "sentence-embedding", sentence_data(tiny_model(name, seed=1))
    if name == "ViTForImageClassification":
        return model, "classification", shape_data("train", 24)  # a plain list of dict rows
    return model, "retrieval", SyntheticCaptions("train", 32)


def old_call(model, method: str, target: float, task: str, data) -> vltrim.Plan:
    """The method's own spelling of the same search: data= + loss_fn= (the task's loss and distillation from the model
    itself, as compress searches); upop train_data=; mope task=."""
    fast, loss = FAST[method], search_loss(get_task(task), model, get_method(method).descriptor.kd)
    if method == "upop":
        return vltrim.plan(model, method, target, train_data=data, loss_fn=loss, **fast)
    if method == "mope":
        return get_method("mope").search(model, target, data=data, task=task, **fast)
    return vltrim.plan(model, method, target, data=data, loss_fn=loss, **fast)


@pytest.mark.parametrize(
    "method,name",
    [
        ("heads", "CLIPModel"),
        ("heads", "BertModel"),
        ("taylor", "CLIPModel"),
        ("taylor", "BertModel"),
        ("taylor", "ViTForImageClassification"),
        ("mope", "CLIPModel"),
        ("mope", "BertModel"),
        ("upop", "CLIPModel"),
        ("upop", "ViTForImageClassification"),
    ],
)
def test_calib_data_and_task_give_the_plan_of_the_methods_own_spelling(method, name):
    model, task, data = case(name)
    want = old_call(model, method, 0.4, task, data).to_dict()
    named = vltrim.plan(model, method, 0.4, calib_data=data, task=task, **FAST[method])
    inferred = vltrim.plan(model, method, 0.4, calib_data=data, **FAST[method])  # the task that fits the model
    assert named.method == method and named.achieved["params_removed"] >= 0.4
    assert named.to_dict() == want and inferred.to_dict() == want


def test_upop_on_a_text_encoder_takes_its_loss_from_the_task():
    """Before, upop on BERT needed loss_fn= (its default loss is CLIP's); calib_data brings the task's loss."""
    model, task, data = case("BertModel")
    got = vltrim.plan(model, "upop", 0.3, calib_data=data, **FAST["upop"])
    loss = search_loss(get_task(task), model)  # sentence-embedding: the loss is the distillation, nothing to add
    assert got.to_dict() == vltrim.plan(model, "upop", 0.3, train_data=data, loss_fn=loss, **FAST["upop"]).to_dict()


def test_task_with_the_methods_own_data_option():
    """task= alone derives the loss; the data may come by the method's own option."""
    model, task, data = case("CLIPModel")
    got = vltrim.plan(model, "heads", 0.4, data=data, task=task, **FAST["heads"])
    assert got.to_dict() == old_call(model, "heads", 0.4, task, data).to_dict()


def test_a_dataloader_is_taken_as_calib_data():
    model, task, data = case("CLIPModel")
    got = vltrim.plan(model, "heads", 0.4, calib_data=DataLoader(data, batch_size=4), **FAST["heads"])
    assert got.to_dict() == old_call(model, "heads", 0.4, task, data).to_dict()


def test_same_plan_as_compress_where_the_task_has_no_distillation():
    """sentence-embedding's loss is its distillation: compress's search loss is the task loss, as plan's is."""
    model, task, data = case("BertModel")
    got = vltrim.plan(model, "taylor", 0.4, calib_data=data, num_batches=2, batch_size=8)
    res = vltrim.compress(
        model,
        "taylor",
        0.4,
        task=task,
        calib_data=data,
        retrain_steps=0,
        batch_size=8,
        latency_batch=0,
        progress=False,
        method_settings={"num_batches": 2},
    )
    assert got.to_dict() == res.plan.to_dict()


def test_plan_and_compress_share_one_loss_function():
    """The runner and vltrim.plan build the loss with the one function in vltrim.tasks.loss."""
    assert runner.task_loss is task_loss


@pytest.mark.parametrize(
    "method,settings",
    [
        ("taylor", dict(num_batches=2)),
        ("heads", dict(num_batches=1)),
        ("upop", dict(interval=1)),
    ],
)
def test_same_plan_as_compress_where_the_task_distils(method, settings):
    """retrieval distils the similarities from the unpruned model: vltrim.plan derives the loss from the task as
    compress does (task loss + the task's distillation + the method's KD defaults), so its plan is compress's."""
    model, task, data = case("CLIPModel")
    steps = dict(steps=2, progress=False) if method == "upop" else {}
    got = vltrim.plan(model, method, 0.4, calib_data=data, task=task, batch_size=8, **steps, **settings)
    run = dict(train_data=data, calib_data=data, search_steps=2, retrain_steps=0, batch_size=8, latency_batch=0)
    res = vltrim.compress(model, method, 0.4, task=task, progress=False, method_settings=settings, **run)
    assert got.to_dict() == res.plan.to_dict()


@pytest.mark.parametrize("method", DATA_FREE)
def test_data_free_methods_refuse_calib_data_and_task(method):
    model, task, data = case("CLIPModel")
    for given in (dict(calib_data=data), dict(task=task), dict(calib_data=data, task=task)):
        with pytest.raises(
            ValueError,
            match=rf"method '{method}' takes no calib_data or task.*heads, modal-adaptive, mope, taylor, upop",
        ):
            vltrim.plan(model, method, 0.3, **given)
    vltrim.plan(model, method, 0.3)  # without them, as before


def test_calib_data_errors_name_the_option():
    model, task, data = case("CLIPModel")
    fast = FAST["heads"]
    with pytest.raises(ValueError, match="unknown task 'retreival'"):
        vltrim.plan(model, "heads", 0.3, calib_data=data, task="retreival", **fast)
    with pytest.raises(ValueError, match="task 'classification' needs an image classifier"):
        vltrim.plan(model, "heads", 0.3, calib_data=data, task="classification", **fast)
    with pytest.raises(ValueError, match=r"no task fits ViTModel.*pass task="):
        vltrim.plan(tiny_model("ViTModel"), "taylor", 0.3, calib_data=shape_data("train", 8))
    with pytest.raises(ValueError, match=r"method 'heads': calib_data and data= are the same input"):
        vltrim.plan(model, "heads", 0.3, calib_data=data, data=data, **fast)
    with pytest.raises(ValueError, match=r"method 'upop': calib_data and train_data= are the same input"):
        vltrim.plan(model, "upop", 0.3, calib_data=data, train_data=data, **FAST["upop"])
    with pytest.raises(
        ValueError, match=r"method 'taylor': the task picked for calib_data \('retrieval'\) and loss_fn= both set"
    ):
        vltrim.plan(model, "taylor", 0.3, calib_data=data, loss_fn=get_task(task).loss)
    with pytest.raises(TypeError, match=r"method 'heads' got an unknown setting 'num_batch'"):
        vltrim.plan(model, "heads", 0.3, calib_data=data, num_batch=1)
    with pytest.raises(TypeError, match="calib_data"):
        vltrim.plan(model, "taylor", 0.3, calib_data="rows.jsonl")
    with pytest.raises(ValueError, match=r"task 'retrieval' and loss_fn= both set its loss_fn"):
        vltrim.plan(model, "heads", 0.3, data=data, task=task, loss_fn=get_task(task).loss)
    for method in ("heads", "taylor", "mope", "upop"):  # task alone: the data is still missing
        with pytest.raises(ValueError, match=rf"method '{method}' scores on data: task= needs calib_data="):
            vltrim.plan(model, method, 0.3, task=task)
