"""The paper's studies (``iarm experiment``): presets of training runs, resumable, summarised
over seeds, reported in the paper's table layouts beside its figures, and plotted.

=====================  ===============================================================
``presets``            the studies as runs (:func:`~.presets.expand`), one folder each
``runner``             trains the runs not finished yet (:func:`~.runner.run_all`)
``results``            finished runs' metrics as mean / std per row (:func:`~.results.summarize`)
``paper``              the paper's own figures (Tables 2-6)
``report``             Markdown tables with the paper's figures beside ours
``attention``          Fig. 5: IARM's attention averaged over the test split
``plots``              PNG plots: AUC against layers, attention heatmaps
``command``            ``iarm experiment``
=====================  ===============================================================
"""
