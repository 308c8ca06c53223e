#!/bin/sh
echo stop > @STOP_FIFO@
