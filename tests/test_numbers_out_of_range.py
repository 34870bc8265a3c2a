"""Numbers and names out of range are refused where they enter, with a sentence: item ids beyond int32 (they would
wrap around to another item), a server's claimed history length, names that would become paths outside the
results folder. Nothing here trains or starts TensorFlow."""

from __future__ import annotations

import os

import pytest

from benchmarks import grid as grid_mod
from mdcns_tf import recommend
from mdcns_tf.savedmodel.signatures import MAX_HISTORY_LENGTH, MAX_ITEM_ID, checked_item_id, checked_max_len
from serving import client
from serving.recommendations import request_rows
from serving.rest_client import _max_len_from_signature
from serving.retry import ServingError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("value", [2**31, 2**32 + 1, -(2**31) - 1, 10**30])
def test_an_item_id_beyond_int32_is_refused_not_wrapped(value: int):
    with pytest.raises(ValueError, match="outside"):
        checked_item_id(value)
    with pytest.raises(ValueError, match="outside"):
        request_rows([[1, value]], keys=False, max_len=5)


def test_the_int32_bounds_themselves_pass():
    assert checked_item_id(0) == 0 and checked_item_id(str(MAX_ITEM_ID)) == MAX_ITEM_ID
    # a negative id fits int32: the model refuses it itself (INVALID_ARGUMENT, tests/test_serving.py)
    assert checked_item_id(-(2**31)) == -(2**31)
    assert request_rows([[3, MAX_ITEM_ID]], keys=False, max_len=3) == [[0, 3, MAX_ITEM_ID]]
    # keys are strings, whatever they look like
    assert request_rows([["99999999999999"]], keys=True, max_len=2) == [["", "99999999999999"]]


def test_recommend_refuses_a_wrapping_id_with_one_line(tmp_path, capsys):
    status = recommend.main(["--model", str(tmp_path), "--history", f"1,{2**31 + 7}"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: item id 2147483655 is outside"), err


def test_the_serving_client_refuses_a_wrapping_id_before_connecting(capsys):
    # port 9 (discard): nothing is sent, the argument check comes first
    with pytest.raises(SystemExit) as exit_info:
        client.main(["--port", "9", "--history", f"5,{2**40}"])
    assert exit_info.value.code == 2
    assert "outside" in capsys.readouterr().err


@pytest.mark.parametrize("claimed", [MAX_HISTORY_LENGTH + 1, 10**12])
def test_a_server_claiming_a_huge_history_length_is_refused(claimed: int):
    signature = {"inputs": {"item_ids": {"tensor_shape": {"dim": [{"size": "-1"}, {"size": str(claimed)}]}}}}
    with pytest.raises(ServingError, match="outside"):
        _max_len_from_signature(signature, "serving_default")
    with pytest.raises(ValueError, match="outside"):
        checked_max_len(claimed, "serving_default")
    ok = {"inputs": {"item_ids": {"tensor_shape": {"dim": [{"size": "-1"}, {"size": "50"}]}}}}
    assert _max_len_from_signature(ok, "serving_default") == 50


def write_grid(tmp_path, name: str = "t", dataset: str = "toy", method: str = "uniform", backbone: str = "sasrec"):
    (tmp_path / "ds.yaml").write_text("data:\n  dir: data/x\n")
    path = tmp_path / "g.yaml"
    path.write_text(
        f"name: {name!r}\nbase: {os.path.join(REPO, 'configs', 'base.yaml')}\nbudget: {{train.epochs: 2}}\n"
        f"datasets:\n  {dataset!r}:\n    input: toy.txt\n    input_format: sequences\n    split: loo\n"
        f"    config: ds.yaml\nbackbones: [{backbone!r}]\nmethods: {{{method!r}: {{}}}}\nseeds: [1]\n"
    )
    return str(path)


@pytest.mark.parametrize(
    "field",
    [
        {"name": "../../outside"},
        {"name": ".."},
        {"name": "/tmp/abs"},
        {"dataset": "../escape"},
        {"dataset": "a/b"},
        {"method": "../m"},
        {"method": ".hidden"},
        {"backbone": "../sasrec"},
    ],
)
def test_grid_names_cannot_write_outside_the_results_folder(tmp_path, field: dict):
    with pytest.raises(grid_mod.GridError, match="folder name"):
        grid_mod.load_grid(write_grid(tmp_path, **field))


def test_a_grid_of_plain_names_loads(tmp_path):
    spec = grid_mod.load_grid(write_grid(tmp_path, name="my-grid_1", dataset="beauty.v2", method="dns_mn"))
    assert [cell.id for cell in spec.cells(None)] == ["beauty.v2/sasrec/dns_mn/seed1"]
