"""`python -m kohya_ext SCRIPT.py ...` runs an sd-scripts trainer with the consistency hooks
(see kohya_ext/launch.py); anything else runs the kohya-ext command line (kohya_ext/cli.py)."""

import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].endswith(".py"):
        from .launch import main as launch_main

        sys.exit(launch_main(sys.argv[1:]))
    from .cli import main

    sys.exit(main())
