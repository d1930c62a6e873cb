"""The hidden checks, one module per workbook, each written with the grader API of common.py (TASKS, REFERENCE,
HINTS), registered here under the workbook's file name."""
from . import (
    attention_maps,
    deit,
    embedding_filters,
    encoder_block,
    fine_tuning,
    hybrid,
    lora,
    masked_patch_prediction,
    patch_embedding,
    position_embeddings,
    reading_libraries,
    vit_vs_cnn,
    windows,
)

GRADERS = {
    "01_patch_embedding": patch_embedding,
    "02_attention_maps": attention_maps,
    "03_position_embeddings": position_embeddings,
    "04_fine_tuning": fine_tuning,
    "05_vit_vs_cnn": vit_vs_cnn,
    "06_deit": deit,
    "07_lora": lora,
    "08_windows_and_relative_positions": windows,
    "09_encoder_block": encoder_block,
    "10_reading_timm_and_transformers": reading_libraries,
    "11_patch_embedding_filters": embedding_filters,
    "12_masked_patch_prediction": masked_patch_prediction,
    "13_hybrid": hybrid,
}
