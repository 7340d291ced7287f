"""resnet_tuner: search ResNets for your own image folders with Keras Tuner."""
