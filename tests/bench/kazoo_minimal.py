"""The minimal kazoo script the runner's overhead is measured against: connect, lock, run, release.

Usage: kazoo_minimal.py HOSTS LOCK_PATH COMMAND [ARG...]
"""
import subprocess
import sys

from kazoo.client import KazooClient

zk = KazooClient(hosts=sys.argv[1])
zk.start()
lock = zk.Lock(sys.argv[2])
lock.acquire()
code = subprocess.call(sys.argv[3:])
lock.release()
zk.stop()
zk.close()
sys.exit(code)
