"""EAGLE2 on megatron-core: tensor/pipeline-parallel model, HF <-> megatron weight bridge, conversion, training.

Importing this package does not import megatron-core; the submodules do (``model``, ``bridge``, ``convert``, ...).
"""
