"""From a smear field to a differential count: a detector finds the cells, classifiers type them.

::

    bench-predict FIELDS --detector DET --classifier CLS --out OUT [--truth ANNOTATIONS]

``DET`` is a detector run folder (or its best.pt); ``CLS`` a classifier checkpoint, run folder or
ensemble folder, or ``LABEL=CLS`` (repeatable) to send each detector label to its own classifier
(Cheuque et al. 2022's two levels: the detector's mononuclear / polymorphonuclear boxes, each
group typed by its own classifier). The stages, each a module:

- :mod:`bench.cascade.models`: loading the detector and the classifiers, which labels are typed;
- :mod:`bench.cascade.chain`: fields -> boxes -> square crops with a margin -> class probabilities,
  a batch of fields and a batch of crops at a time; the per-cell table;
- :mod:`bench.cascade.tables`: the counts (per field and in total) and ``summary.md``;
- :mod:`bench.cascade.scoring`: with ground truth, predicted cells matched to true ones at
  IoU >= 0.5, and what each stage loses (``cascade_metrics.json``);
- :mod:`bench.cascade.draw`: one annotated picture per field;
- :mod:`bench.cascade.run`: the command and the output folder.
"""
