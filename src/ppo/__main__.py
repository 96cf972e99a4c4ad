from ppo.cli import main

main()
