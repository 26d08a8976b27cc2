from matcli.cli import main

main()
