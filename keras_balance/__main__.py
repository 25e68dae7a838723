import sys

from keras_balance.cli import main

sys.exit(main())
