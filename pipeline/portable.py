"""The subset of Beam the graph keeps to, so that every runner runs it the same: why, and two helpers.

The graph uses only single-output ParDos, GroupByKey/CoGroupByKey, Flatten and combiners without default values:
no side input and no tagged output, and every step leads to the last one. Beam 2.77's Dask runner
(`apache_beam.runners.dask`) gets the rest wrong, and every other runner runs this subset as well:

- Tagged outputs: its ParDo puts every output in every output collection::

      out = p | beam.Create([1, 2]) | beam.ParDo(
          lambda x: [x, beam.pvalue.TaggedOutput("neg", -x)]).with_outputs("neg", main="main")
      out.neg | beam.Map(print)   # Dask: 1, -1, 2, -2 (the main outputs too); any other runner: -1, -2

  so a step emits ``(tag, value)`` pairs and `select` picks one tag.
- Side inputs: a side input is the producing dask bag pickled into each task of the consumer and recomputed there
  (``list(bag)`` in ``DaskBagWindowedIterator``), once per partition, in that one worker::

      seen = p | "s" >> beam.Create(range(5)) | beam.Map(lambda x: open(f"/tmp/si_{x}", "a").write("x") and x)
      p | beam.Create(range(300)) | beam.Map(lambda x, s: x, beam.pvalue.AsList(seen))
      # Dask: each /tmp/si_* holds "xxx" (3 partitions of 128); any other runner: "x"

  With the vocabularies as side inputs the whole upstream pipeline reran inside every records task. So ids are
  joined (`pipeline.records.MakeRecords`), k-core groups by item (`pipeline.sequences.KCore`), and a global
  combine that must yield a value on empty input gets it from a ``Create`` marker (`combine_globally`), not from
  Beam's default injection (a side input).
- Steps that lead nowhere: the runner computes only what the last step applied depends on::

      p | "a" >> beam.Create([1]) | "wa" >> beam.Map(lambda _: open("/tmp/a", "w"))
      p | "b" >> beam.Create([2]) | "wb" >> beam.Map(lambda _: open("/tmp/b", "w"))
      # Dask: only /tmp/b is created; any other runner: both

  so every result (files written, counts, vocabularies) feeds the last step (`pipeline.preprocess.Finish`).
- ``finish_bundle`` outputs are dropped, so Beam's own file sinks lose or rewrite files: `pipeline.sinks`.

Errors cross runners differently too: the Python direct runner re-raises a DoFn's exception as its own type (the
step's name appended) or chained to it, its multi-process mode and portable runners as a ``RuntimeError`` holding
the worker's traceback as text. `worker_error` finds an expected error (a damaged input, a split file that does not
fit the data) either way, so that the command line prints one sentence instead of a traceback.
"""

from __future__ import annotations

import re
from typing import Any

import apache_beam as beam


def _with_tag(element: tuple[str, Any], tag: str) -> list[Any]:
    return [element[1]] if element[0] == tag else []


def select(tagged: beam.PCollection, tag: str, label: str) -> beam.PCollection:
    """The values of ``(tag, value)`` pairs with this tag (a portable stand-in for a tagged output)."""
    return tagged | label >> beam.FlatMap(_with_tag, tag)


def combine_globally(pcoll: beam.PCollection, fn: beam.CombineFn, empty: Any, label: str) -> beam.PCollection:
    """``CombineGlobally(fn)`` that yields exactly one value, ``fn``'s result for ``empty`` on empty input.

    Beam injects the empty result through a side input; here a ``Create([empty])`` marker is combined in instead
    (``fn`` must ignore it: an empty collection of keys, an empty dict), which every runner supports.
    """
    marker = pcoll.pipeline | f"{label}Empty" >> beam.Create([empty])
    return (
        (pcoll, marker) | f"{label}WithEmpty" >> beam.Flatten() | label >> beam.CombineGlobally(fn).without_defaults()
    )


_STEP_SUFFIX = re.compile(r" \[while running '[^']*'\]$")


def worker_error(error: BaseException | None, types: tuple[type[BaseException], ...]) -> str | None:
    """The message of an error of one of ``types`` raised inside the pipeline, whichever way the runner brought it
    back (the type itself or chained: ``__cause__`` / ``__context__``; else the last ``module.Type: message`` line
    of a remote traceback), without the step name Beam appends; None when there is none."""
    seen, text = set(), ""
    while error is not None and id(error) not in seen:
        if isinstance(error, types):
            return _STEP_SUFFIX.sub("", str(error))
        seen.add(id(error))
        text += "\n" + str(error)
        error = error.__cause__ or error.__context__
    names = "|".join(re.escape(f"{t.__module__}.{t.__qualname__}") for t in types)
    found = re.findall(rf"(?<![\w.])(?:{names}): ([^\n]*)", text)
    return _STEP_SUFFIX.sub("", found[-1]) if found else None
