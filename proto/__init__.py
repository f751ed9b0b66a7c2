"""Wire format: natlens.proto and the code grpcio-tools generates from it."""
