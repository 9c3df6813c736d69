import sys, torch, torchvision
from torch.profiler import profile, ProfilerActivity
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
for arch, b in [("resnet50", 64), ("resnet18", 64), ("resnet50", 1)]:
    m = getattr(torchvision.models, arch)().cuda().eval()
    x = torch.randn(b, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        for _ in range(5): m(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5): m(x)
            torch.cuda.synchronize()
    print(f"==== {arch} b{b} (5 forwards)")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=110))
