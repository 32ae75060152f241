FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir .
ENV LLMLENS_DATA_DIR=/data LLMLENS_HOST=0.0.0.0
VOLUME /data
EXPOSE 8787
CMD ["llmlens", "serve", "--host", "0.0.0.0"]
