from kstudio_cli import main

main()
