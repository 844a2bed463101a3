"""Analysis verbs: read a finished run directory, write results under ``analysis/<verb>/``.

    dltrain eval RUN_DIR       metrics, per-class table, confusion matrix, confident mistakes
    dltrain predict RUN_DIR    inference on CSV / NPZ / image files with the training normalisation
    dltrain export RUN_DIR     ONNX or TorchScript, checked against PyTorch on real inputs
    dltrain compress RUN_DIR   magnitude pruning and dynamic int8 quantization, before/after table
    dltrain explain RUN_DIR    captum attributions as heatmaps over the inputs
    dltrain robust RUN_DIR     accuracy under FGSM, PGD and Gaussian noise

Each verb reads only the run directory (through `dltrain.runs.load_run`), never the training
loop. One module per verb; `common` holds what they share.
"""
