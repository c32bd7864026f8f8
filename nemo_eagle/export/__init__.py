"""Deployment exports: the image encoder to ONNX (for TensorRT) and the LLM as an HF directory."""

from nemo_eagle.export.onnx import ImageEncoder, export_image_encoder, export_llm_dir, verify_image_encoder

__all__ = ["ImageEncoder", "export_image_encoder", "export_llm_dir", "verify_image_encoder"]
