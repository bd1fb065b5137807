"""SimCLR pre-training of an f_p encoder, as pretrain_SimCLR.py runs it.

    augment.py   both views of a batch, made on the images' device (torchvision's SimCLR CIFAR pipeline)
    trainer.py   one step (views, NT-Xent, SGD), its CUDA graph, the state a resume restores; the kNN monitor
    epochs.py    the epochs of one command: the log, state.pt, --stop_after and signals
    export.py    the encoder file and its sidecar, and whose a path is before anything is written there
    checks.py    every flag, and a --resume's flags against its run, checked before any work
"""
