import torch

# The test models are tiny: one thread avoids oversubscription when the suite shares the
# two CI cores with subprocesses, and keeps timings steady.
torch.set_num_threads(1)
