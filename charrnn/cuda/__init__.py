"""Everything that imports numba-cuda: the CUDA kernels (kernels.py, the same model as
charrnn/kernels/cpu.py), the model on the device (model.py), the training step (train.py) and
the sampler (sample.py). Imported only when --device asks for CUDA (charrnn.device), so a CPU
run never loads numba-cuda."""
