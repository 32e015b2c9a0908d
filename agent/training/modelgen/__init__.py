"""Rebuilds the committed model zoo (``agent/models/*.tflite``) with TensorFlow; never used on devices.

Run ``python -m fedge.agent.training.modelgen`` in a venv with the ``modelgen`` extra
(tensorflow-cpu 2.14). Every gradient is written out by hand, so the converted graphs hold
builtin ops only (plain autodiff emits Flex ops that tflite-runtime cannot run).
"""
