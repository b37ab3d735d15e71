"""kernels/softmax"""
