"""The ONNX rows of an export: conversion, static int8 (QDQ) and its fitting passes."""
