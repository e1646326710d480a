from metrify.entrypoints.cli import main

main()
