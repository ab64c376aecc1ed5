from fgbg.app.server import main

main()
