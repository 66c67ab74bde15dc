from recsparse.cli import main

main()
