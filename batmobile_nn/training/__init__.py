"""Training and fine-tuning MACE with batmobile_nn: mace-torch's ``run_train`` with ``--enable_batmobile``.

``run_train.main(argv)`` is ``batmobile-nn train``; ``emt_data`` builds the EMT-labelled Cu/Ag/Au/Al data of
the embedded demo model (``scripts/make_emt_dataset.py``, ``scripts/make_demo_model.py``). Importing this
package imports neither mace nor ASE.

>>> from batmobile_nn.training.run_train import main
>>> main(["--config", "configs/emt_from_scratch.yaml"])  # doctest: +SKIP
0
"""
