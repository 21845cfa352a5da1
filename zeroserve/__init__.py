"""The product's face: the zeroserve CLI and the local all-in-one runtime."""
