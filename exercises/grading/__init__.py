"""The hidden checks, one module per workbook: TASKS maps a task number to a function (namespace, output_dir)
that raises `Mistake` when the learner's answer is wrong."""
from . import attention_maps, fine_tuning, patch_embedding, position_embeddings, vit_vs_cnn

GRADERS = {
    "01_patch_embedding": patch_embedding.TASKS,
    "02_attention_maps": attention_maps.TASKS,
    "03_position_embeddings": position_embeddings.TASKS,
    "04_fine_tuning": fine_tuning.TASKS,
    "05_vit_vs_cnn": vit_vs_cnn.TASKS,
}
