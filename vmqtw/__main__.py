from vmqtw.tap import main

main()
