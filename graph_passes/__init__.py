"""ONNX -> ONNX rewrites that put Whisper's matrix work into ``xdna`` nodes.

One fusion per file (``fuse_attention``, ``fuse_matmul``, ``fuse_softmax``), the partitioner
(``partition``), and ``orchestrator.run_passes``, which fixes their order and reports counts and
reasons. ``xdna_ops`` is the contract of the fused nodes; ``graph`` and ``shapes`` are shared helpers.
"""
