from natlens.cli import main

main()
