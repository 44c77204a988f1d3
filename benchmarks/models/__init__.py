"""Reference architectures written here (torchvision does not install beside torch 2.13)."""
