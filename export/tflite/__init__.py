"""The TFLite rows of an export: conversion, full-integer int8 and its fitting passes."""
