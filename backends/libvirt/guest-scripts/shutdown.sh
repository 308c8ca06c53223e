#!/bin/sh
echo stop > /run/initctl
